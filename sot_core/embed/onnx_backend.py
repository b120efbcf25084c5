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

The export and its cache in the store are `sot_core.embed.exported`'s (`ONNX_RECIPES` says how
each backend's ``model.onnx`` is made).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sot_core.embed.exported import ExportedSentenceModel, ExportRecipe, default_threads, export_fp32

#: Bumped whenever the export or the quantisation recipe changes (part of cache keys and encoder ids).
EXPORT_VERSION = "v1"


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


def _build_onnx(model_dir: Path, folder: Path, max_length: int) -> None:
    export_fp32(model_dir, folder / "model.onnx", max_length)


def _build_int8(model_dir: Path, folder: Path, max_length: int) -> None:
    fp32 = folder / "fp32.onnx"
    export_fp32(model_dir, fp32, max_length)
    _quantise_int8(fp32, folder / "model.onnx")
    fp32.unlink()


#: The ONNX Runtime backends and how their ``model.onnx`` is made.
ONNX_RECIPES = {
    "onnx": ExportRecipe("onnx", EXPORT_VERSION, ("model.onnx",), _build_onnx),
    "int8": ExportRecipe("int8", EXPORT_VERSION, ("model.onnx",), _build_int8),
}


class OnnxSentenceModel(ExportedSentenceModel):
    """Tokeniser + ONNX Runtime session + mean pooling: texts to unit vectors.

    Parameters
    ----------
    model_path : Path
        An export made by `sot_core.embed.exported.cached_export`.
    model_dir : Path
        The packaged model folder (its tokenizer).
    max_length : int
        Token cap per text (the same as the PyTorch path's ``max_seq_length``).
    threads : int, optional
        ONNX Runtime intra-op threads; default `sot_core.embed.exported.default_threads`.
    """

    def __init__(self, model_path: Path, model_dir: Path, max_length: int, threads: int | None = None):
        import onnxruntime as ort

        super().__init__(model_dir, max_length)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]
