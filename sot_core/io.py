"""Files on disk: where the store lives, content digests, and writes that never leave half a file.

* `default_home`: the project's state folder (``$SOT_HOME`` or ``./.sot``): the store's catalog
  and files, converted and aligned models (``models/``) and fitted judges (``judges/``).
* Digests: `digest` (sha256 of byte or text chunks, cut to ``n`` hex digits) and `file_sha256`.
  Ids and cache keys built from them are persisted in stores, so each caller keeps its own
  length and its own input bytes: changing either would orphan what is already stored.
* Atomic writes, one temp-then-rename rule for files and folders: the output is written under a
  unique hidden name next to its final path (same filesystem, so the rename is atomic) and renamed
  into place only when complete. A reader sees the old output or the new one, never part of one,
  and a failure leaves what was there before untouched.
* Temp names carry the writing process's id (``.NAME.PID-UUID.tmp`` for files,
  ``.NAME.PID.tmp-XXXX`` for folders). A ``kill -9`` skips the cleanup, so its temp outputs stay
  behind; `sweep_temp` removes those whose process is gone (the store does at its first open in a
  process, training in its run folder). Temp names are per machine: a folder written from two
  machines at once is not supported (the store's lock and DuckDB are per machine too).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator


def default_home() -> Path:
    """The store's home and the root of the project's state: ``$SOT_HOME`` or ``./.sot``."""
    return Path(os.environ.get("SOT_HOME", ".sot"))


# --------------------------------------------------------------------------- digests
def digest(*chunks: bytes | str | Iterable[bytes | str], n: int | None = None) -> str:
    """Hex sha256 of the chunks fed one after the other (text as UTF-8), cut to `n` digits.

    Feeding chunks is the same as hashing their concatenation; no separator is added, so a
    caller that needs ``("ab", "c")`` and ``("a", "bc")`` to differ puts one in its chunks. A
    chunk that is neither bytes nor text is an iterable of chunks (a generator streams them).
    """
    h = hashlib.sha256()
    for chunk in chunks:
        for part in (chunk,) if isinstance(chunk, (bytes, str)) else chunk:
            h.update(part.encode("utf-8") if isinstance(part, str) else part)
    return h.hexdigest()[:n]


def file_sha256(path: str | os.PathLike) -> str:
    """Full hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- atomic writes
def temp_name(path: Path) -> Path:
    """A unique hidden temp name beside `path` that names this process (see `sweep_temp`)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")


@contextlib.contextmanager
def staged_write(path: Path, write: Callable[[Path], None]) -> Iterator[Path]:
    """Call ``write(tmp)`` on a `temp_name` beside `path`, flush it to disk and yield it.

    The caller renames it into place (``os.replace(tmp, path)``) inside the block, e.g. while it
    holds a lock; whatever is left at the temp name when the block ends is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a unique temp name beside `path`, flush it to disk, rename it in place.

    The temp file is removed if `write` fails; `path`'s folder is created when missing.
    """
    with staged_write(path, write) as tmp:
        os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    """Write UTF-8 `text` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_table(table, path: Path) -> None:
    """Write a pyarrow Table as Parquet to `path` atomically (see `atomic_write`)."""
    import pyarrow.parquet as pq  # lazy: this module stays importable without pyarrow loaded

    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def temp_dir(final: Path) -> Path:
    """A new empty hidden temp folder beside `final` that names this process (see `sweep_temp`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.tmp-", dir=final.parent))


@contextlib.contextmanager
def atomic_dir(final: Path, *, mode: int | None = None, keep_if: str | None = None) -> Iterator[Path]:
    """Yield an empty temp folder beside `final`; when the block ends cleanly, rename it to `final`.

    Parameters
    ----------
    final : Path
        Where the folder ends up. Its parent is created when missing.
    mode : int, optional
        Permissions set on the folder (``mkdtemp`` makes it private; a shared model cache wants
        ``0o755``).
    keep_if : str, optional
        A file name that marks a complete folder. If `final` appeared meanwhile (another process
        built the same thing) and holds this file, theirs is kept and ours discarded rather than
        swapping a folder under a reader; otherwise the clash raises ``OSError``.

    On an error inside the block nothing is renamed and the temp folder is removed.
    """
    final = Path(final)
    tmp = temp_dir(final)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            if keep_if is None or not (final / keep_if).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- leftovers of killed writers
_TEMP = re.compile(r"^\..+\.(\d+)(?:-[0-9a-f]{32}\.tmp|\.tmp-[A-Za-z0-9_]+)$")


def process_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie (a killed child nobody reaped yet)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep_temp(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the temp files and folders (see `temp_name`, `atomic_dir`) under `root` whose writing
    process is gone, e.g. killed with ``kill -9``; returns what was removed. Temp outputs of live
    processes are left alone, so this is safe while other runs write."""
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        for name in list(dirs) + files:
            match = _TEMP.match(name)
            if match is None or process_alive(int(match.group(1))):
                continue
            path = Path(folder) / name
            if name in dirs:
                dirs.remove(name)  # do not walk into it
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        if not recursive:
            break
    return removed
