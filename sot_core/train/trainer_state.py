"""The trainer's state in a checkpoint, stored without pickle: tensors as safetensors, the rest as JSON.

`torch.save` pickles, and unpickling runs whatever code the file names: a checkpoint folder is
read back by a later run, possibly after others could write to it, so a planted
``trainer_state.pt`` would run code on resume. This format cannot: ``trainer_state.safetensors``
holds every tensor (optimizer moments, RNG states) by key, and ``trainer_state.json`` holds the
structure around them (steps, losses, learning rates, Python and NumPy RNG states), with tensors
referenced by key. Python and NumPy values round-trip exactly (floats through their shortest
repr), so a resumed run is bit-identical to an uninterrupted one.

Encoding of what JSON lacks: ``{"$tensor": key}`` for a tensor, ``{"$ndarray": {dtype, shape,
data}}`` for a (small) NumPy array, ``{"$tuple": [...]}`` for a tuple, ``{"$items": [[key,
value], ...]}`` for a dict whose keys are not all text (the optimizer's parameter ids).
"""
from __future__ import annotations

import json
from pathlib import Path

from sot_core.errors import SotError

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
FORMAT = 1


def save_state(state: dict, folder: Path) -> None:
    """Write `state` (dicts, lists, tuples, scalars, text, tensors, NumPy arrays) into `folder`.

    Raises TypeError for any other value: it fails when the checkpoint is written, not when read.
    """
    from safetensors.torch import save_file

    tensors: dict = {}
    tree = _pack(state, tensors)
    save_file(tensors, str(Path(folder) / STATE_TENSORS))
    (Path(folder) / STATE_JSON).write_text(json.dumps({"format": FORMAT, "state": tree}))


def load_state(folder: Path) -> dict:
    """Read what `save_state` wrote. A missing, damaged or foreign state raises `SotError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / STATE_JSON
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a trainer state of format {FORMAT}")
        path = folder / STATE_TENSORS
        tensors = load_file(str(path))
        path = folder / STATE_JSON
        return _unpack(doc["state"], tensors)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise SotError(f"{path}: cannot read the trainer state ({type(exc).__name__}: {exc}); delete this "
                       "checkpoint folder to resume from an earlier one, or the checkpoints folder to start "
                       "over") from None


def _pack(value, tensors: dict):
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": key}
    if isinstance(value, np.ndarray):
        return {"$ndarray": {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"$tuple": [_pack(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_pack(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _pack(v, tensors) for k, v in value.items()}
        return {"$items": [[_pack(k, tensors), _pack(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a trainer state")


def _unpack(value, tensors: dict):
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, body), = value.items()
        if tag == "$tensor":
            return tensors[body]
        if tag == "$ndarray":
            import numpy as np

            return np.asarray(body["data"], dtype=np.dtype(body["dtype"])).reshape(body["shape"])
        if tag == "$tuple":
            return tuple(_unpack(v, tensors) for v in body)
        if tag == "$items":
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in body}
    return {k: _unpack(v, tensors) for k, v in value.items()}
