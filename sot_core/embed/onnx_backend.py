"""ONNX Runtime backends of the MiniLM sentence encoder: an fp32 export and an int8 quantisation.

The PyTorch model (`sot_core.embed.encoders.MiniLMEncoder`, backend ``torch``) stays the
reference; these backends run the same weights faster on CPUs.

- ``onnx``: the BERT encoder exported with ``torch.onnx.export`` from the packaged weights
  (offline, no hub), run by ONNX Runtime in fp32. Vectors match PyTorch to float rounding.
- ``int8``: that export with dynamic int8 quantisation of the weight matrix products
  (``onnxruntime.quantization.quantize_dynamic``): weights int8 *per output channel*, activations
  uint8 per tensor, quantised at run time. Measured on 300 demo rows (cosine to PyTorch): the
  library's defaults (per-tensor weights, the embedding table quantised too) 0.95 mean, 0.91 min;
  per-channel, products only, 0.994 mean, 0.986 min; and with the feed-forward output products
  kept in fp32 (this recipe) 0.9975 mean, 0.994 min. The attention score products have no
  weights and stay fp32. Activations are quantised per batch, so a row's int8 vector depends (in
  the third decimal of its cosines) on the rows batched with it: the same shards give the same
  vectors, and the store keeps the first vector made for a (content, encoder id).
  Integer products use VNNI where the CPU has it.

Mean pooling over the attention mask and L2 normalisation follow sentence-transformers'
``Pooling(mean)`` + ``Normalize`` modules, in NumPy.

The exported model is cached per store (``<home>/models/<key>/``) as a folder renamed into
place when complete (`sot_core.io.atomic_dir`): the model files (``model.onnx``, a protobuf that
ONNX Runtime parses; or OpenVINO's ``model.xml`` + ``model.bin`` for the ``openvino`` backend of
`sot_core.embed.openvino_backend`; nothing is unpickled) and ``manifest.json`` with their sha256,
checked at every load (a damaged file is exported again, never used). The key holds the model's
fingerprint, the backend and its `RECIPE_VERSIONS` entry, so another model or recipe never reuses
an export. The graph's batch and length axes are dynamic, so one export serves every token cap
(the tokenizer applies the cap; the manifest's ``max_length`` is the cap of the encoder that first
built it).
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sot_core.embed.openvino_backend import IR_FILES, build_ir
from sot_core.embed.openvino_backend import RECIPE_VERSION as OPENVINO_RECIPE
from sot_core.io import atomic_dir, file_sha256

#: Bumped whenever the export or the quantisation recipe changes (part of cache keys and encoder ids).
EXPORT_VERSION = "v1"
ONNX_BACKENDS = ("onnx", "int8")
#: Recipe version of every exported backend: one backend's change never invalidates another's vectors.
RECIPE_VERSIONS = {"onnx": EXPORT_VERSION, "int8": EXPORT_VERSION, "openvino": OPENVINO_RECIPE}
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_key(fingerprint: str, backend: str) -> str:
    """Cache folder name of an export: model fingerprint + backend + recipe version."""
    return f"minilm-l6-v2-{fingerprint}-{backend}-{RECIPE_VERSIONS[backend]}"


def model_files(backend: str) -> tuple[str, ...]:
    """The files of an export; the first is the one a runtime opens."""
    return IR_FILES if backend == "openvino" else ("model.onnx",)


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


# The second feed-forward product of each layer (``layer.N/output/dense``) reads the GELU output,
# whose few large values make per-tensor uint8 activations coarse: quantising it cost the most
# (demo rows, min cosine to PyTorch 0.986 with it, 0.994 without), so it stays fp32.
_KEEP_FP32 = re.compile(r"layer\.\d+/output/dense/MatMul")


def _quantise_int8(src: Path, dst: Path) -> None:
    """Dynamic int8: per-channel int8 weights, uint8 activations, for the weight products but the
    feed-forward outputs (`_KEEP_FP32`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "MatMul" and _KEEP_FP32.search(n.name)]
    if not keep:
        raise RuntimeError(f"{src}: no feed-forward output product found to keep in fp32; the export changed")
    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=keep, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def build_export(model_dir: Path, folder: Path, backend: str, max_length: int) -> None:
    """Write the model files of `backend` (`model_files`) into `folder` (a fresh temp folder)."""
    if backend == "openvino":
        build_ir(model_dir, folder, max_length)
        return
    fp32 = folder / ("model.onnx" if backend == "onnx" else "fp32.onnx")
    export_fp32(model_dir, fp32, max_length)
    if backend == "int8":
        _quantise_int8(fp32, folder / "model.onnx")
        fp32.unlink()


def _manifest_problem(folder: Path, files: tuple[str, ...]) -> str | None:
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


def cached_export(cache_root: Path, model_dir: Path, fingerprint: str, backend: str, max_length: int) -> Path:
    """Path of the export for (model, backend) under `cache_root`, built once and verified on use.

    Concurrent builders (Dask workers on one store) each build in their own temp folder; the first
    rename wins and the others keep it (`atomic_dir` with ``keep_if``). A folder whose files do
    not match its manifest's sha256 is replaced (one stderr line naming it).
    """
    final = Path(cache_root) / export_key(fingerprint, backend)
    files = model_files(backend)
    if (final / "manifest.json").exists():
        problem = _manifest_problem(final, files)
        if problem is None:
            return final / files[0]
        print(f"{final / files[0]}: cached {backend} export {problem}; exporting it again", file=sys.stderr)
        _remove_folder(final)
    with atomic_dir(final, mode=0o755, keep_if="manifest.json") as tmp:
        build_export(model_dir, tmp, backend, max_length)
        digests = {name: file_sha256(tmp / name) for name in files}
        info = {"sha256": digests[files[0]], "files": digests, "backend": backend, "fingerprint": fingerprint,
                "export_version": RECIPE_VERSIONS[backend], "max_length": max_length}
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


class OnnxSentenceModel:
    """Tokeniser + ONNX Runtime session + mean pooling: texts to unit vectors.

    Parameters
    ----------
    model_path : Path
        An export made by `cached_export`.
    model_dir : Path
        The packaged model folder (its tokenizer).
    max_length : int
        Token cap per text (the same as the PyTorch path's ``max_seq_length``).
    threads : int, optional
        ONNX Runtime intra-op threads; default: torch's thread count if torch is loaded (it
        follows ``OMP_NUM_THREADS``, which Dask workers set to their thread count), else all cores.
    """

    def __init__(self, model_path: Path, model_dir: Path, max_length: int, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.max_length = max_length
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        r"""Unit vectors of `texts`, shape (n, 384): :math:`v = \sum_t m_t h_t / \sum_t m_t`,
        normalised, with :math:`m` the attention mask and :math:`h` the last hidden states."""
        feed = tokenize(self.tokenizer, texts, self.max_length)
        return mean_pool(self.session.run(None, feed)[0], feed["attention_mask"])


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """The graph's int64 inputs for `texts`, padded to the longest and cut at `max_length`."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: batch[name].astype(np.int64) for name in _INPUTS}


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Unit-norm masked means of the last hidden states, (n, tokens, d) -> (n, d) float32."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _default_threads() -> int:
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
