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
"""
from __future__ import annotations

import contextlib
import hashlib
import os
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
def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a unique temp name beside `path`, flush it to disk, rename it in place.

    The temp file is removed if `write` fails; `path`'s folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(text: str, path: Path) -> None:
    """Write UTF-8 `text` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_table(table, path: Path) -> None:
    """Write a pyarrow Table as Parquet to `path` atomically (see `atomic_write`)."""
    import pyarrow.parquet as pq  # lazy: this module stays importable without pyarrow loaded

    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


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
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
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
