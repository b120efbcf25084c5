"""What the exported MiniLM backends share: the export, its cache in the store, and the
tokenise-run-pool loop around a runtime.

The backends (`sot_core.embed.onnx_backend`: ONNX Runtime fp32 and int8;
`sot_core.embed.openvino_backend`: OpenVINO static int8) each describe their model files with an
`ExportRecipe` and subclass `ExportedSentenceModel` with the one call that differs, the runtime's.

Every export starts from `export_fp32`, a ``torch.onnx.export`` of the packaged weights (offline,
no hub). It is cached per store (``<home>/models/<key>/``) as a folder renamed into place when
complete (`sot_core.io.atomic_dir`): the model files (an ONNX protobuf, or OpenVINO's ``model.xml``
+ ``model.bin``; nothing is unpickled) and ``manifest.json`` with their sha256, checked at every
load (a damaged file is exported again, never used). The key holds the model's fingerprint, the
backend and its recipe version, so another model or recipe never reuses an export. The graph's
batch and length axes are dynamic, so one export serves every token cap (the tokenizer applies the
cap; the manifest's ``max_length`` is the cap of the encoder that first built it).

Mean pooling over the attention mask and L2 normalisation follow sentence-transformers'
``Pooling(mean)`` + ``Normalize`` modules, in NumPy.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sot_core.io import atomic_dir, file_sha256

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class ExportRecipe:
    """How one backend's model files are made.

    Attributes
    ----------
    backend : str
        The MiniLM backend name (``onnx``, ``int8``, ``openvino``).
    version : str
        Bumped whenever the recipe changes; part of the cache key and the encoder id, so one
        backend's change never invalidates another's vectors.
    files : tuple of str
        The files it writes; the first is the one the runtime opens.
    build : callable
        ``build(model_dir, folder, max_length)`` writes `files` into `folder`, a fresh temp folder.
    """

    backend: str
    version: str
    files: tuple[str, ...]
    build: Callable[[Path, Path, int], None]


def export_key(fingerprint: str, recipe: ExportRecipe) -> str:
    """Cache folder name of an export: model fingerprint + backend + recipe version."""
    return f"minilm-l6-v2-{fingerprint}-{recipe.backend}-{recipe.version}"


def export_fp32(model_dir: Path, path: Path, max_length: int) -> None:
    """Trace the packaged BERT encoder to ONNX (last hidden state; batch and length dynamic)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    # eager attention traces to plain ONNX ops that every runtime knows
    bert = AutoModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    # rows of different lengths, so the traced graph keeps the padding mask
    sample = tok(["a short row", "a longer row " * 8], padding=True, truncation=True, max_length=max_length,
                 return_tensors="pt")
    dynamic = {name: {0: "batch", 1: "tokens"} for name in _INPUTS}
    with torch.no_grad():
        torch.onnx.export(LastHidden(bert), tuple(sample[n] for n in _INPUTS), str(path), input_names=list(_INPUTS),
                          output_names=["last_hidden_state"], dynamic_axes=dynamic, opset_version=17, dynamo=False)


def manifest_problem(folder: Path, files: tuple[str, ...]) -> str | None:
    """Why the export in `folder` cannot be used, or None when every file matches its manifest."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        # exports written before multi-file manifests hold one "sha256", of model.onnx
        expected = manifest.get("files") or {files[0]: manifest["sha256"]}
        if set(expected) == set(files) and all(file_sha256(folder / n) == expected[n] for n in files):
            return None
        return "does not match the sha256 in its manifest"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"is unreadable ({type(err).__name__})"


def cached_export(cache_root: Path, model_dir: Path, fingerprint: str, recipe: ExportRecipe, max_length: int) -> Path:
    """Path of `recipe`'s export of the model under `cache_root`, built once and verified on use.

    Concurrent builders (Dask workers on one store) each build in their own temp folder; the first
    rename wins and the others keep it (`atomic_dir` with ``keep_if``). A folder whose files do
    not match its manifest's sha256 is replaced (one stderr line naming it).
    """
    final = Path(cache_root) / export_key(fingerprint, recipe)
    files = recipe.files
    if (final / "manifest.json").exists():
        problem = manifest_problem(final, files)
        if problem is None:
            return final / files[0]
        print(f"{final / files[0]}: cached {recipe.backend} export {problem}; exporting it again", file=sys.stderr)
        _remove_folder(final)
    with atomic_dir(final, mode=0o755, keep_if="manifest.json") as tmp:
        recipe.build(model_dir, tmp, max_length)
        digests = {name: file_sha256(tmp / name) for name in files}
        info = {"sha256": digests[files[0]], "files": digests, "backend": recipe.backend, "fingerprint": fingerprint,
                "export_version": recipe.version, "max_length": max_length}
        (tmp / "manifest.json").write_text(json.dumps(info, indent=1))
    return final / files[0]


def _remove_folder(folder: Path) -> None:
    """Move a damaged export aside and delete it (a rename first, so no reader sees half a folder)."""
    import shutil
    import uuid

    aside = folder.with_name(f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        os.replace(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


class ExportedSentenceModel:
    """Tokeniser + an exported model + mean pooling: texts to unit vectors.

    Subclasses load their runtime in ``__init__`` (after calling this one) and implement `_run`.

    Parameters
    ----------
    model_dir : Path
        The packaged model folder (its tokenizer).
    max_length : int
        Token cap per text (the same as the PyTorch path's ``max_seq_length``).
    """

    def __init__(self, model_dir: Path, max_length: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.max_length = max_length

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The last hidden states, (n, tokens, 384), for the int64 inputs of `tokenize`."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        r"""Unit vectors of `texts`, shape (n, 384): :math:`v = \sum_t m_t h_t / \sum_t m_t`,
        normalised, with :math:`m` the attention mask and :math:`h` the last hidden states."""
        feed = tokenize(self.tokenizer, texts, self.max_length)
        return mean_pool(self._run(feed), feed["attention_mask"])


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """The graph's int64 inputs for `texts`, padded to the longest and cut at `max_length`."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: batch[name].astype(np.int64) for name in _INPUTS}


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Unit-norm masked means of the last hidden states, (n, tokens, d) -> (n, d) float32."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def default_threads() -> int:
    """Runtime threads: ``OMP_NUM_THREADS`` (Dask workers set it to their thread count), else this
    process's cores."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def embed_sorted(encode: Callable[[list[str]], np.ndarray], texts: Sequence[str], dim: int, batch_size: int,
                 progress: Callable[[int], None] | None) -> np.ndarray:
    """Embed `texts` in batches of similar length (little padding), in the callers' order."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = encode([texts[i] for i in idx])
        if progress is not None:
            progress(len(idx))
    return out
