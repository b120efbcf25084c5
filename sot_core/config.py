"""Every user-facing default of the system, in one place.

Configuration is a set of frozen dataclasses in the peft style: each field carries its help text
(and, where it has them, its bounds) in ``metadata``. The `sot` command line builds its options
from these fields, and the Prefect flows take their parameter defaults from them, so a default is
written once (``tests/test_config_consistency.py`` checks that nothing drifts). Choices are
``Literal`` types; `sot_core.fields.validate_fields` checks choices and bounds of any of these
classes.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from sot_core.fields import same_field, validate_fields
from sot_core.io import digest

CODE_VERSION = "0.1.0"
# The bundled demo data; the default inputs of `sot curate` and the curation flow.
DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"
# Kept rows listed in review.jsonl by default (`sot_core.curate.review`).
REVIEW_ROWS = 50

Mode = Literal["push-pull", "pull", "push"]
Stratify = Literal["none", "label"]
TrainWeighting = Literal["normalised", "uniform"]
Dtype = Literal["float32", "float64"]
LoraWeighting = Literal["given", "uniform"]
Precision = Literal["auto", "fp32", "bf16"]
UtilityTask = Literal["sst2", "ag_news", "none"]
# Representations of a (prompt, response) row; the suffix of an encoder spec (`minilm:contrast`).
View = Literal["pair", "response", "both", "contrast"]
# How many rows to keep: a fraction in (0, 1] (an upper bound on top of the harmful-row budget),
# or "auto" (the budget alone decides; `sot_core.curate.budget`).
Keep = float | Literal["auto"]


# --------------------------------------------------------------------------- OT solver
@dataclass(frozen=True)
class SolverOptions:
    """Advanced settings of the push-pull solver; the defaults suit cosine costs."""

    tau: float | None = field(default=None, metadata={
        "gt": 0,
        "help": "Temperature of the weights, in the score's units (cosine-cost units): the solver minimises "
                "OT(w, anchor) - lam*OT(w, harmful) + tau*KL(w|uniform), whose solution is w = softmax(-score/tau), "
                "so two rows whose scores differ by tau differ in weight by a factor e. Empty: "
                "0.2*max(1, lam), raised to 2*eps*max(1, lam) when eps > 0.1; it does not shrink with eps. "
                "Must exceed eps (anchor modes) and should exceed lam*eps (against collapse)."})
    step_size: float = field(default=1.0, metadata={
        "gt": 0, "le": 1,
        "help": "Damping s in (0, 1] of the linearised push between outer steps; 1 = plain DCA, "
                "monotone in the objective."})
    max_outer: int = field(default=50, metadata={"ge": 1, "help": "Maximum number of outer (DCA) steps."})
    outer_tol: float = field(default=1e-3, metadata={
        "gt": 0, "help": "Stop when ||softmax(-score/tau) - w||_1 <= outer_tol (fixed-point residual)."})
    sinkhorn_tol: float = field(default=1e-4, metadata={
        "gt": 0, "help": "L1 marginal error at which each inner Sinkhorn solve stops."})
    max_sinkhorn_iter: int = field(default=1000, metadata={"ge": 1, "help": "Iteration cap per Sinkhorn solve."})
    eps_scaling: bool = field(default=True, metadata={
        "help": "Anneal eps (halving from the cost spread) on the first, cold solve."})
    min_ess: float = field(default=0.1, metadata={
        "ge": 0, "lt": 1,
        "help": "Collapse guard: when the effective sample size 1/sum(w^2) of the solution is below this "
                "fraction of the pool, the solve is reported converged=False (stop_reason 'collapsed'); 0: off."})
    max_seconds: float | None = field(default=600.0, metadata={
        "gt": 0,
        "help": "Time budget of one solve in seconds; when it is spent the solve stops with an error that "
                "names eps and what to change (empty: no limit)."})
    dtype: Dtype = field(default="float32", metadata={
        "help": "Floating point type of the solve: float32 (fast; on cosine costs it converges like float64 "
                "down to eps=1e-3) or float64."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."})

    def __post_init__(self):
        validate_fields(self)


@dataclass(frozen=True)
class PushPullConfig(SolverOptions):
    """Settings of `solve_push_pull`: the objective's parameters plus the solver options."""

    lam: float = field(default=1.0, metadata={
        "ge": 0, "help": "Push strength lambda: objective OT(w, anchor) - lam * OT(w, harmful) + tau * KL(w|uniform)."})
    eps: float = field(default=0.1, metadata={
        "gt": 0, "help": "Entropic regularisation of both OT problems, in cosine-cost units (how sharply each "
                         "OT problem matches rows; the weights' spread is set by tau)."})
    mode: Mode = field(default="push-pull", metadata={
        "help": "push-pull (anchor and harmful), pull (anchor only) or push (harmful only)."})

    def effective_tau(self) -> float:
        """tau, or its default max(0.2, 2 eps) * max(1, lam): 0.2 cost units (the score's units)
        per unit of push strength, independent of eps unless eps > 0.1 forces it up (tau > eps,
        tau > lam * eps). At the default eps = 0.1 this equals the earlier default 2 eps max(1, lam)."""
        if self.tau is not None:
            return self.tau
        return max(0.2, 2.0 * self.eps) * max(1.0, self.lam)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        validate_fields(self)
        tau = self.effective_tau()
        if self.mode != "push" and tau <= self.eps:
            raise ValueError(f"tau={tau} must exceed eps={self.eps} when the anchor term is "
                             "used (the anchor step is semi-relaxed OT with rho = tau - eps > 0)")
        if self.mode != "pull" and self.lam * self.eps >= tau:
            warnings.warn(f"tau={tau} <= lam*eps={self.lam * self.eps}: the push term can "
                          "collapse the weights onto a few rows; raise tau", stacklevel=4)


# --------------------------------------------------------------------------- curation
# Where embedding shards run: in-process, a local Dask cluster, Ray, or a Dask scheduler's address.
RUNNER_PATTERN = r"local|dask|ray|tcp://[A-Za-z0-9.\[\]:_-]+:[0-9]+"
# Curation settings that change how a run executes, not its result.
EXECUTION_FIELDS = ("shard_rows", "runner")

@dataclass(frozen=True)
class CurateConfig:
    """What decides a curation's result (the run's inputs and outputs are flow parameters)."""

    keep: Keep = field(default=0.8, metadata={
        "gt": 0, "le": 1,
        "help": "Rows kept: 'auto' keeps every row below the harmful-row threshold (see --harmful-recall); a "
                "fraction in (0, 1] keeps the top fraction by weight among those rows (an upper bound)."})
    harmful_recall: float = field(default=0.95, metadata={
        "ge": 0, "lt": 1,
        "help": "Harmful-row budget: drop every row that scores like harmful rows, with the threshold calibrated "
                "so that this share of harmful reference rows held out from the solve (cross-fitting) is dropped; "
                "0: no budget, keep alone decides."})
    refusal_guard: bool = field(default=True, metadata={
        "help": "Keep rows whose whole response refuses (a refusal opening that never turns to compliance; "
                "sot_core/refusals.py): they are exempt from the harmful-row budget and ranked first, since "
                "refusals to harmful prompts are wanted safety data; apology-then-comply answers are not exempt."})
    lam: float = same_field(PushPullConfig, "lam")
    eps: float = same_field(PushPullConfig, "eps")
    mode: Mode = same_field(PushPullConfig, "mode")
    encoder: str = field(default="minilm", metadata={
        "help": "Encoder: minilm[:pair|response|both|contrast] (PyTorch, the reference), minilm-onnx or minilm-int8 "
                "(the same model on ONNX Runtime, fp32 or int8), minilm-openvino (static int8 on OpenVINO: the fastest on "
                "CPUs; the openvino extra), minilm-fp16 or minilm-bf16 (CUDA), "
                "or hf:MODEL[:pair|response|both|contrast][@final|middle|N], or two joined by + "
                "(minilm+hf:MODEL:pair@N: topic and the aligned model's view side by side, the model's states "
                "centred on the pool)."})
    lm_share: float | None = field(default=None, metadata={
        "gt": 0, "lt": 1,
        "help": "Composite encoders only: share of the cosine given to the causal LM's blocks, the rest to MiniLM "
                "(empty: every block the same). Measured with the aligned model (benchmarks/RESULTS.md, "
                "aligned_budget): 0.25 ranks harm better than equal weights (budget AUROC 0.980 against 0.977 on 30 "
                "held-out general-pool draws) but keeps fewer refusals; with --harmful-recall 0.97 it kept 3.0 of 100 "
                "harmful rows and 87.5% of benign rows."})
    knn: int | None = field(default=None, metadata={
        "ge": 1, "help": "k nearest reference rows per pool row; empty: dense costs when small, kNN when large."})
    train_weighting: TrainWeighting = field(default="normalised", metadata={
        "help": "Training weights of kept rows: normalised (w / mean w, clipped to [0.2, 5]) or uniform."})
    refusal_share: float = field(default=0.2, metadata={
        "ge": 0, "lt": 1,
        "help": "Share of the anchor mass on the refusal rows when a refusal anchor is given."})
    stratify: Stratify = field(default="none", metadata={
        "help": "label: keep each label's share (rows sharing a response of >= 20 rows form a label); "
                "free-form rows are selected by weight alone."})
    batch_size: int = field(default=64, metadata={"ge": 1, "help": "Encoder batch size."})
    shard_rows: int = field(default=8192, metadata={
        "ge": 1, "help": "Rows per embedding shard (rounded down to whole batches): one Prefect task and one stored "
                         "file each; a killed run loses at most one shard's work."})
    runner: str = field(default="local", metadata={
        "pattern": RUNNER_PATTERN, "pattern_help": "local, dask, ray, or a Dask scheduler address tcp://HOST:PORT",
        "help": "Where embedding shards run: local (this process), dask (a local Dask cluster), ray (a local Ray "
                "instance), or the address of a Dask scheduler (tcp://HOST:PORT); every worker must reach the store."})
    solver: SolverOptions = field(default_factory=SolverOptions, metadata={"help": "Advanced solver settings."})

    def __post_init__(self):
        if isinstance(self.solver, dict):  # from JSON (run.json, a Prefect parameter)
            object.__setattr__(self, "solver", SolverOptions(**self.solver))
        validate_fields(self)
        if self.lm_share is not None and not self.composite_encoder():
            raise ValueError(f"lm_share weighs the blocks of a composite encoder (minilm+hf:MODEL...); "
                             f"encoder {self.encoder!r} has one: leave lm_share empty")
        if self.keep == "auto" and self.harmful_recall == 0:
            raise ValueError("keep 'auto' needs the harmful-row budget: set harmful_recall > 0 (e.g. 0.95) "
                             "or give keep as a fraction")

    def composite_encoder(self) -> bool:
        """Whether `encoder` joins encoders side by side (``minilm+hf:MODEL...``)."""
        from sot_core.embed.composite import split_spec  # lazily: embedding code is not needed otherwise

        return len(split_spec(self.encoder)) > 1

    def push_pull(self) -> PushPullConfig:
        return PushPullConfig(lam=self.lam, eps=self.eps, mode=self.mode, **asdict(self.solver))

    def to_dict(self) -> dict:
        return asdict(self)

    def result_dict(self) -> dict:
        """`to_dict` without the fields that say how a run executes, not what it computes (cache
        keys and lineage hashes use this, so another runner or shard size reuses the results)."""
        return {k: v for k, v in asdict(self).items() if k not in EXECUTION_FIELDS}


def config_hash(*parts) -> str:
    """Deterministic short hash of JSON-able parts (configs, dataset ids, code version)."""
    return digest(json.dumps([CODE_VERSION, *parts], sort_keys=True, default=str), n=24)


# --------------------------------------------------------------------------- fine-tuning
# Fields that do not change the trained adapter: a run may be resumed with other values.
_NON_RESULT_FIELDS = ("checkpoint_every", "max_steps_this_run", "keep_checkpoints", "num_threads", "device")


@dataclass(frozen=True)
class LoraTrainConfig:
    """Configuration of `train_lora`."""

    r: int = field(default=16, metadata={"ge": 1, "help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"ge": 0, "lt": 1, "help": "Dropout on the LoRA input path."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Module names that receive LoRA adapters (paper: q and v projections)."},
    )
    learning_rate: float = field(default=2e-4, metadata={"gt": 0, "help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"ge": 0, "help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.03, metadata={
        "ge": 0, "le": 1, "help": "Fraction of steps with linear warm-up; linear decay after."})
    epochs: int = field(default=2, metadata={"ge": 1, "help": "Passes over the data (paper: 2)."})
    batch_size: int = field(default=8, metadata={"ge": 1, "help": "Samples per optimizer step."})
    max_length: int = field(default=256, metadata={"ge": 8, "help": "Token cap per sample; responses are truncated first."})
    seed: int = field(default=0, metadata={"help": "Fixes LoRA init, data order and dropout."})
    checkpoint_every: int = field(default=50, metadata={
        "ge": 0, "help": "Write a resumable checkpoint every N optimizer steps (0: never)."})
    keep_checkpoints: int = field(default=2, metadata={"ge": 1, "help": "How many recent checkpoints to keep on disk."})
    weighting: LoraWeighting = field(default="given", metadata={
        "help": "given: use each row's weight; uniform: every row weighs 1 (ablation)."})
    max_grad_norm: float = field(default=1.0, metadata={"ge": 0, "help": "Gradient clipping norm (0: off)."})
    max_steps_this_run: int | None = field(default=None, metadata={
        "ge": 1, "help": "Stop after this many steps in this process (the run resumes later)."})
    num_threads: int | None = field(default=None, metadata={"ge": 1, "help": "torch intra-op threads (empty: torch default)."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."})
    # bf16 autocast halves activation memory and uses the tensor cores on a GPU; on x86 CPUs
    # bf16 matmuls are slower than fp32, so 'auto' keeps fp32 there.
    precision: Precision = field(default="auto", metadata={"help": "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16."})

    def __post_init__(self):
        validate_fields(self)

    def result_fields(self) -> dict:
        """The fields that influence the trained adapter (what cache keys must hash)."""
        d = {k: v for k, v in asdict(self).items() if k not in _NON_RESULT_FIELDS}
        if d["precision"] == "auto":  # resolved by the device (fp32 on CPU), like the device itself
            del d["precision"]
        return d

    def result_hash(self) -> str:
        """Hash of the fields that influence the trained adapter."""
        return digest(json.dumps(self.result_fields(), sort_keys=True), n=16)


# --------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EvalSpec:
    """What `evaluate_model` measures (sizes trade precision for CPU time)."""

    harmful_sets: list[str] = field(default_factory=lambda: ["advbench", "harmbench", "strongreject", "jailbreakbench"],
                                    metadata={"help": "Held-out harmful prompt sources, sampled round-robin."})
    n_harmful: int = field(default=200, metadata={"ge": 1, "help": "Held-out harmful prompts."})
    n_benign: int = field(default=100, metadata={"ge": 0, "help": "Held-out benign instructions (MT-Bench, Alpaca 800+)."})
    n_xstest: int = field(default=125, metadata={"ge": 0, "help": "XSTest safe prompts of the eval split (odd ids)."})
    utility_task: UtilityTask = field(default="sst2", metadata={"help": "Utility task: sst2, ag_news or none."})
    n_utility: int = field(default=200, metadata={"ge": 0, "help": "Utility rows."})
    utility_max_new_tokens: int = field(default=16, metadata={"ge": 1, "help": "Tokens per utility answer."})
    max_new_tokens: int = field(default=48, metadata={"ge": 1, "help": "Greedy tokens per completion."})
    batch_size: int = field(default=16, metadata={"ge": 1, "help": "Generation batch size."})
    seed: int = field(default=0, metadata={"help": "Seeds prompt sampling."})
    use_learned_judge: bool = field(default=True, metadata={"help": "Also report harmful_rate_judge (MiniLM logreg)."})
    guard_model: str | None = field(default=None, metadata={"help": "Local guard model folder (e.g. Llama Guard)."})
    data_dir: str | None = field(default=None, metadata={"help": "Shared data folder; empty: shared_data_dir()."})
    per_prompt: bool = field(default=False, metadata={
        "help": "Also return the harmful prompts and each judge's 0/1 verdict per prompt (for paired comparisons)."})

    def __post_init__(self):
        if self.utility_task is None:  # the earlier spelling of "no utility task"
            object.__setattr__(self, "utility_task", "none")
        validate_fields(self)


# --------------------------------------------------------------------------- run parameters
# What a run reads and writes (not what decides its result). With CurateConfig, LoraTrainConfig
# and EvalSpec these are the parameters of the Prefect flows and the options of `sot`.
# Names become folder and file names in the store: no separators, no leading dot, bounded length.
NAME_RULE = {"pattern": r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
             "pattern_help": "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64"}


@dataclass(frozen=True)
class StoreOptions:
    """Where the store lives."""

    home: str | None = field(default=None, metadata={
        "help": "Store folder (empty: $SOT_HOME, else ./.sot under the working directory)."})

    def __post_init__(self):
        validate_fields(self)


@dataclass(frozen=True)
class CurateInputs(StoreOptions):
    """Inputs and outputs of one curation; the defaults curate the bundled demo."""

    pool: str = field(default=str(DEMO_DIR / "pool.jsonl"), metadata={"help": "Pool to curate: jsonl/json/csv/parquet file, Hugging Face datasets folder or hf:NAME."})
    safe_anchor: str = field(default=str(DEMO_DIR / "safe_anchor.jsonl"), metadata={"help": "Trusted safe sample of the task (same formats)."})
    harmful_ref: str = field(default=str(DEMO_DIR / "harmful_ref.jsonl"), metadata={"help": "Harmful reference set (same formats)."})
    labels: str | None = field(default=None, metadata={"help": "Optional id,label file: the report then states harmful rows kept (the demo pool's labels "
        "are used when the pool is the demo pool). A labelled file without an id field (the pool itself, e.g. a "
        "fine-tuning mix with --label-field flag) is matched row by row, as ingestion ids its rows."})
    label_field: str = field(default="label", metadata={"help": "Field of --labels holding the label; harmful when it "
        "reads 1, true, yes, unsafe or harmful."})
    refusal_anchor: str | None = field(default=None, metadata={"help": "Safe answers to harmful prompts added to the anchor, so refusals in the pool are kept "
        "(e.g. data/refusals/pyrit_refusals.jsonl)."})
    out_dir: str = field(default="out/demo", metadata={"help": "Output folder of the curated version."})
    review_rows: int = field(default=REVIEW_ROWS, metadata={
        "ge": 0, "help": "Kept rows written to review.jsonl for a person to read before training: those that score "
                         "most like harm, most harmful-like first (0: none). It changes no result."})
    name: str = field(default="default", metadata={
        "help": "Name of the curated dataset in the catalog; also prefixes the artifact keys.", **NAME_RULE})
    prompt_field: str | None = field(default=None, metadata={"help": "Explicit name of the prompt field. The pool must have the named fields; "
        "another input uses them when it has any of them, else its own layout is detected."})
    response_field: str | None = field(default=None, metadata={"help": "Explicit name of the response field."})
    id_field: str | None = field(default=None, metadata={"help": "Explicit name of the id field."})
    input_field: str | None = field(default=None, metadata={"help": "Explicit name of the input field (Alpaca)."})
    messages_field: str | None = field(default=None, metadata={"help": "Explicit name of the chat messages field."})

    def field_names(self) -> dict | None:
        """The explicit field names given, as {prompt: ..., response: ...}; None when none."""
        given = {k: getattr(self, f"{k}_field") for k in ("prompt", "response", "id", "input", "messages")}
        return {k: v for k, v in given.items() if v} or None


@dataclass(frozen=True)
class NightlyInputs(StoreOptions):
    """Where new rows arrive and where each night's version goes."""

    incoming: str | None = field(default="data/incoming", metadata={"help": "Folder where new data files (jsonl/json/csv/parquet) arrive; empty: none."})
    incoming_table: str | None = field(default=None, metadata={"help": "DuckDB table of new rows, as PATH.duckdb:TABLE; empty: none."})
    watermark_column: str = field(default="seq", metadata={
        "help": "Increasing column of the incoming table (sequence number or timestamp)."})
    base_pool: str | None = field(default=None, metadata={"help": "Pool the accumulated data starts from (e.g. the last full curation's pool)."})
    safe_anchor: str = same_field(CurateInputs, "safe_anchor")
    harmful_ref: str = same_field(CurateInputs, "harmful_ref")
    refusal_anchor: str | None = same_field(CurateInputs, "refusal_anchor")
    out_dir: str = field(default="out/nightly", metadata={"help": "Output folder of the latest version (overwritten each night)."})
    review_rows: int = same_field(CurateInputs, "review_rows")
    window: int | None = field(default=None, metadata={
        "ge": 1, "help": "Keep only the most recent N rows of the accumulated pool (empty: all)."})
    name: str = field(default="nightly", metadata={
        "help": "Curated dataset name: its watermark, versions and artifact keys.", **NAME_RULE})
    drift_tolerance: float = field(default=0.25, metadata={
        "ge": 0, "help": "Drift alert (event sot.nightly.drift) when a batch's distance to the harmful reference falls, "
        "or to the anchor rises, by more than this fraction of its median over earlier batches."})


@dataclass(frozen=True)
class FinetuneInputs(StoreOptions):
    """What a fine-tuning run trains on and where it writes."""

    curated: str | None = field(default=None, metadata={"help": "curated.jsonl to train on; empty: curate pool / safe_anchor / harmful_ref first."})
    pool: str = same_field(CurateInputs, "pool")
    safe_anchor: str = same_field(CurateInputs, "safe_anchor")
    harmful_ref: str = same_field(CurateInputs, "harmful_ref")
    base_model: str = field(default="aligned-smollm2", metadata={
        "help": "Base model folder or hub id; aligned-smollm2 builds the bundled aligned base."})
    out_dir: str = field(default="out/finetune", metadata={"help": "Run folder: checkpoints, adapter, metrics."})
    replay: str | None = field(default=None, metadata={"help": "Trusted refusals (harmful prompt -> safe answer) mixed into training, e.g. "
        "data/refusals/pyrit_refusals.jsonl; evaluation then skips their prompts."})
    replay_fraction: float = field(default=0.1, metadata={
        "ge": 0, "le": 1, "help": "Replay rows per curated row (used only with replay)."})
