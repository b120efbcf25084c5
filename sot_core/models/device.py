"""Where torch work runs: one rule shared by the OT solver, training, evaluation and encoders."""
from __future__ import annotations


def resolve_device(device: str = "auto"):
    """``torch.device`` for 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    import torch  # lazy: importing this module must stay cheap

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
