"""Configuration of a curation run, as a dataclass with help text (peft style)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

CODE_VERSION = "0.1.0"


@dataclass
class CurateConfig:
    keep: float = field(default=0.8, metadata={"help": "fraction of the pool kept (top-K by weight)"})
    lam: float = field(default=1.0, metadata={"help": "push strength: objective OT(w, anchor) - lam * OT(w, harmful)"})
    eps: float = field(
        default=0.1, metadata={"help": "entropic regularisation of both OT problems, in cosine-cost units"}
    )
    mode: str = field(default="push-pull", metadata={"help": "push-pull | pull | push"})
    encoder: str = field(default="minilm", metadata={"help": "encoder spec: minilm[:pair|response|both|contrast] or hf:<model>[:repr]"})
    knn: int | None = field(
        default=None, metadata={"help": "k nearest reference rows per pool row; None: dense when small, kNN when large"}
    )
    train_weighting: str = field(
        default="normalised",
        metadata={"help": "training weights of kept rows: normalised (w / mean w, clipped to [0.2, 5]) | uniform"},
    )
    refusal_share: float = field(
        default=0.2,
        metadata={"help": "share of the anchor mass on the refusal rows, when a refusal anchor is given "
                          "(safe answers to harmful prompts; see benchmarks/refusal_anchor.py)"},
    )
    stratify: str = field(
        default="none",
        metadata={"help": "none | label: keep each label's share (rows sharing a response of >= 20 rows form a "
                          "label) while free-form rows are selected by weight alone"},
    )
    batch_size: int = field(default=64, metadata={"help": "encoder batch size"})
    solver: dict = field(default_factory=dict, metadata={"help": "extra PushPullConfig fields (tau, step_size, ...)"})

    def __post_init__(self):
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {self.keep}")
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.lam < 0:
            raise ValueError(f"lam must be non-negative, got {self.lam}")
        if self.mode not in ("push-pull", "pull", "push"):
            raise ValueError(f"mode must be push-pull, pull or push, got {self.mode!r}")
        if not 0.0 <= self.refusal_share < 1.0:
            raise ValueError(f"refusal_share must be in [0, 1), got {self.refusal_share}")
        if self.stratify not in ("none", "label"):
            raise ValueError(f"stratify must be none or label, got {self.stratify!r}")
        if self.train_weighting not in ("normalised", "uniform"):
            raise ValueError(f"train_weighting must be normalised or uniform, got {self.train_weighting!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def config_hash(*parts) -> str:
    """Deterministic short hash of JSON-able parts (configs, dataset ids, code version)."""
    blob = json.dumps([CODE_VERSION, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]
