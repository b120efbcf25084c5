"""OpenVINO backend of the MiniLM sentence encoder: static int8, the fastest CPU path we measured.

``minilm-openvino`` runs the same packaged weights as the PyTorch reference, quantised with NNCF's
post-training static quantisation (``nncf.quantize``, ``model_type=TRANSFORMER``): weights int8
per channel, activations int8 with ranges fixed from a calibration set, the attention score
products and normalisations left in floating point by the transformer preset. Measured on this
2-core machine (`benchmarks/RESULTS.md`, ``embed_scaling``): 2.3-2.6x the reference's rows/s on a
quiet machine (3.0-3.6x on a busy one, measured with the earlier probe's calibration rows), at
cosine 0.997 mean / 0.992 min to the reference on the six shared pools; NNCF's default preset (no
transformer type) ran at 2.9x but lost the geometry (cosine 0.59).

Unlike ONNX Runtime's dynamic int8 (`sot_core.embed.onnx_backend`), the activation ranges are
fixed at build time, so a row's vector does not depend on the rows batched with it.

Calibration: the bundled demo's harmful reference and safe anchor (`CALIBRATION_FILES`, 322
rows; they ship with the project, so every machine builds the same model). Their text is pinned
by `CALIBRATION_SHA256`; if the files change, the build refuses until `RECIPE_VERSION` (part of
the encoder id and the cache key) is bumped with the new digest, so vectors of two calibrations
never mix in a store.

The model is built offline at the first use (``torch.onnx.export`` of the packaged weights, read by
OpenVINO, quantised) and cached in the store like the ONNX exports (``model.xml`` + ``model.bin``,
OpenVINO's IR: a graph in XML and raw weights, nothing unpickled), each file's sha256 checked at
every load (`sot_core.embed.exported.cached_export`).

Reference: NNCF post-training quantisation,
https://docs.openvino.ai/2025/openvino-workflow/model-optimization-guide/quantizing-models-post-training.html
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from sot_core.embed.exported import ExportedSentenceModel, ExportRecipe, export_fp32, tokenize

#: Bumped whenever the quantisation recipe or its calibration set changes (encoder id, cache key).
RECIPE_VERSION = "v1"
#: The calibration rows: files of the bundled demo data (``data/demo``).
CALIBRATION_FILES = ("harmful_ref.jsonl", "safe_anchor.jsonl")
#: sha256 of the calibration texts (`calibration_texts`, joined by NUL) that `RECIPE_VERSION` was built from.
CALIBRATION_SHA256 = "99c44cd3309d93bc28de8c8f54932c2de942375b3aa9c8c88831010a4d6d0aae"
IR_FILES = ("model.xml", "model.bin")
#: How to get the backend's packages, in every message that says one is missing.
INSTALL_HINT = "pip install -e '.[openvino]' (scripts/setup.sh installs it)"


def missing_packages() -> list[str]:
    """The backend's packages (openvino, nncf) that this environment lacks, without importing them."""
    import importlib.util

    return [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]


def _require_openvino():
    missing = missing_packages()
    if missing:
        raise ImportError(f"the minilm-openvino backend needs {', '.join(missing)}: {INSTALL_HINT}")
    import openvino

    return openvino


def calibration_texts(demo_dir: Path | None = None) -> list[str]:
    """The calibration rows as the encoder sees them (`pair_text`), in file order."""
    from sot_core.config import DEMO_DIR
    from sot_core.data.loaders import load_rows
    from sot_core.embed.base import pair_text

    texts = []
    for name in CALIBRATION_FILES:
        table = load_rows(str(Path(demo_dir or DEMO_DIR) / name))
        prompts, responses = table.column("prompt").to_pylist(), table.column("response").to_pylist()
        texts += [pair_text(p, r) for p, r in zip(prompts, responses)]
    return texts


def calibration_digest(texts: Sequence[str]) -> str:
    """sha256 of `texts` joined by NUL (compared with `CALIBRATION_SHA256`)."""
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()


def build_ir(model_dir: Path, folder: Path, max_length: int, demo_dir: Path | None = None) -> None:
    """Write the static-int8 IR (``model.xml`` + ``model.bin``) of the packaged model into `folder`."""
    from transformers import AutoTokenizer

    ov = _require_openvino()
    import nncf

    texts = calibration_texts(demo_dir)
    if calibration_digest(texts) != CALIBRATION_SHA256:
        names = ", ".join(str(Path(demo_dir or "data/demo") / n) for n in CALIBRATION_FILES)
        raise RuntimeError(f"the OpenVINO calibration rows ({names}) changed since recipe {RECIPE_VERSION}: bump "
                           "RECIPE_VERSION and CALIBRATION_SHA256 in sot_core/embed/openvino_backend.py together")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    dataset = nncf.Dataset(texts, lambda text: tokenize(tokenizer, [text], max_length))
    onnx_path = folder / "fp32.onnx"
    export_fp32(model_dir, onnx_path, max_length)
    nncf.set_log_level(logging.WARNING)  # one INFO line per operation otherwise; the progress bars stay
    quantised = nncf.quantize(ov.Core().read_model(str(onnx_path)), dataset, subset_size=len(texts),
                              model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(quantised, str(folder / "model.xml"), compress_to_fp16=False)
    onnx_path.unlink()


#: How the backend's model files are made (`sot_core.embed.exported.cached_export`).
RECIPE = ExportRecipe("openvino", RECIPE_VERSION, IR_FILES, build_ir)


class OpenVinoSentenceModel(ExportedSentenceModel):
    """Tokeniser + compiled OpenVINO model + mean pooling: texts to unit vectors.

    Parameters
    ----------
    model_path : Path
        ``model.xml`` made by `build_ir` (its ``model.bin`` beside it).
    model_dir : Path
        The packaged model folder (its tokenizer).
    max_length : int
        Token cap per text (the same as the PyTorch path's ``max_seq_length``).
    threads : int
        Inference threads (see `sot_core.embed.exported.default_threads`).
    """

    def __init__(self, model_path: Path, model_dir: Path, max_length: int, threads: int):
        ov = _require_openvino()
        super().__init__(model_dir, max_length)
        # Pinning threads to cores cost ~25% on a machine shared with other jobs (measured), and the
        # latency hint runs one batch on all threads: the caller already batches.
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        self.request = compiled.create_infer_request()

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.request.infer(feed)[0]
