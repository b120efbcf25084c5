"""A reproducible recipe that turns SmolLM2-135M-Instruct (not safety-aligned) into an aligned base.

Safety erosion by fine-tuning can only be studied on a model that refuses to begin with. The
recipe: LoRA on all projections, one epoch over a *balanced* mix, merged into the base.

* refusal rows: harmful instruction -> refusal, from safety-tuned-llamas' training file, keeping
  outputs that actually refuse (some of its outputs are long safe explanations instead);
* benign rows, more of them than refusal rows: Alpaca demo rows 0-799 (rows 800+ are held out
  for over-refusal evaluation), GSM8K train problems, and XSTest's *safe but edgy-sounding*
  prompts of the train split (even ids; odd ids are held out) answered by the base model itself
  (self-distillation: the answer licence is the model's own Apache-2.0, and it teaches "kill a
  Python process" is fine without changing the model's style). Refusal data alone teaches the
  model to refuse anything that sounds edgy; these rows target exactly that failure;
* benign task rows: SST-2 and AG News *train* rows of the fine-tuning mixes (label-balanced, short
  inputs, answer = the bare label), some SST-2 rows in the Alpaca template, the rest unwrapped, so
  the base keeps following "respond only positive or negative" prompts (utility is measured on
  SST-2 validation / AG News test, never trained on).

Measured refusal, over-refusal and utility rates of the recipe (and of the recipes it replaced)
are in benchmarks/RESULTS.md (section safety_e2e).

The aligned model is cached under ``<cache>/aligned-<hash of recipe config>`` with
``align_manifest.json``; rerunning with the same config returns the cached folder.
Run ``python -m sot_core.train.align --eval`` to build it and print refusal / over-refusal rates.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from sot_core.config import LoraTrainConfig
from sot_core.data.loaders import canonical_prompt, unwrap_alpaca_template
from sot_core.io import atomic_dir, atomic_write_text, digest
from sot_core.models.llm import copy_tokenizer_files, default_model_cache, load_causal_lm, model_fingerprint, resolve_model_path
from sot_core.refusals import keyword_refusal
from sot_core.train.lora import train_lora

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class AlignConfig:
    """Recipe of the aligned base (every field enters the cache key)."""

    base_model: str = field(default="smollm2", metadata={"help": "Model to align (alias 'smollm2' = shipped GGUF)."})
    # Refusal rows are ~38% of the default mix: enough to refuse most held-out harmful prompts
    # while over-refusal of held-out benign instructions stays near 20% (benchmarks/RESULTS.md).
    n_refusal: int = field(default=256, metadata={"help": "Harmful instruction -> refusal rows (safety-tuned-llamas)."})
    # Plain benign rows outnumber the refusal rows, which keeps over-refusal down.
    n_alpaca: int = field(default=208, metadata={"help": "Benign Alpaca rows (drawn from rows 0-799)."})
    n_gsm8k: int = field(default=16, metadata={"help": "Benign GSM8K train problems."})
    n_xstest: int = field(default=125, metadata={"help": "XSTest safe train-split prompts with self-distilled answers."})
    # Short classification tasks: without benign "respond only with a label" instructions the
    # aligned base refuses SST-2 prompts ("I cannot provide you with any negative or positive
    # feedback"). Train rows of the fine-tuning mixes (flag "finetune"); evaluation uses
    # sst2/val.json and ag_news/test.json, so nothing leaks. Enough rows per label that the base
    # follows the instruction instead of always answering one label.
    n_sst2: int = field(default=48, metadata={"help": "Benign SST-2 train rows (sentiment label answers)."})
    n_agnews: int = field(default=24, metadata={"help": "Benign AG News train rows (topic label answers), short articles."})
    task_templated: float = field(
        default=0.5,
        # Downstream fine-tuning rows arrive unwrapped (sot_core.data.loaders.load_rows), while
        # task prompts written by hand often keep the full Alpaca template: half of the SST-2 rows
        # keep it so the base follows both shapes.
        metadata={"help": "Share of SST-2 rows kept in the Alpaca template (rest, and all AG News rows, unwrapped)."})
    distill_tokens: int = field(default=96, metadata={"help": "Max new tokens of self-distilled answers."})
    seed: int = field(default=0, metadata={"help": "Row sampling and training seed."})
    train: LoraTrainConfig = field(
        default_factory=lambda: LoraTrainConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(ALL_PROJ),
                                                learning_rate=1e-3, epochs=1, batch_size=8, max_length=96,
                                                checkpoint_every=10, seed=0),
        # 96 tokens: a refusal is decided in its first words, and a step's cost grows about
        # linearly with the tokens per row.
        metadata={"help": "LoRA training settings (all projections, one epoch, <=96 tokens)."},
    )

    def key(self) -> str:
        """12 hex digits naming the aligned model: the recipe, training fields and base model."""
        d = {**asdict(self), "train": self.train.result_fields()}
        d["base_fingerprint"] = model_fingerprint(self.base_model)
        return digest(json.dumps(d, sort_keys=True), n=12)


def _row(i: str, prompt: str, response: str, source: str) -> dict:
    return {"id": i, "prompt": prompt, "response": response, "source": source, "weight": 1.0}


def _refusal_split(cfg: AlignConfig, data: Path, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(refusal rows the recipe trains on, the other refusal rows of the same file)."""
    stl = json.load(open(data / "safety_tuned_llamas/training/safety_only_data_Instructions.json"))
    refusals = [(k, r) for k, r in enumerate(stl) if keyword_refusal(r["output"]) and not r.get("input")]
    used = rng.sample(refusals, min(cfg.n_refusal, len(refusals)))
    rows = [_row(f"stl-{k}", r["instruction"], r["output"], "safety_tuned_llamas") for k, (_, r) in enumerate(used)]
    taken = {i for i, _ in used}
    rest = [_row(f"stl-heldout-{i}", r["instruction"], r["output"], "safety_tuned_llamas")
            for i, r in refusals if i not in taken]
    return rows, rest


def heldout_refusals(cfg: AlignConfig | None = None, data_dir: str | Path | None = None) -> list[dict]:
    """Refusal rows (harmful instruction -> refusal) of the recipe's source that it does not train on.

    Trusted safe data for replay during later fine-tuning (`sot_core.train.replay`) that neither
    repeats the alignment rows nor touches the evaluation prompts (AdvBench & co.).
    """
    from sot_core.eval.eval_sets import shared_data_dir

    cfg = cfg or AlignConfig()
    return _refusal_split(cfg, Path(data_dir) if data_dir else shared_data_dir(), random.Random(cfg.seed))[1]


def build_alignment_rows(cfg: AlignConfig, data: Path, distill: Callable[[list[str]], list[str]] | None = None) -> list[dict]:
    """The training mix (shuffled). `distill(prompts) -> answers` supplies XSTest answers."""
    from sot_core.eval.eval_sets import xstest_prompts

    rng = random.Random(cfg.seed)
    rows, _ = _refusal_split(cfg, data, rng)
    alpaca = json.load(open(data / "alpaca_en_demo/alpaca_en_demo.json"))[:800]  # 800+ held out
    for k, r in enumerate(rng.sample(alpaca, cfg.n_alpaca)):
        rows.append(_row(f"alpaca-{k}", canonical_prompt(r["instruction"], r.get("input") or ""), r["output"],
                         "alpaca_en_demo"))
    gsm = [json.loads(l) for l in open(data / "gsm8k/train.jsonl")]
    for k, r in enumerate(rng.sample(gsm, cfg.n_gsm8k)):
        rows.append(_row(f"gsm8k-{k}", r["question"], r["answer"].replace("####", "The answer is"), "gsm8k"))
    tasks = data / "harmful_finetune_mixes_beavertails"
    for name, rel, n, share in (("sst2", "sst2/train_merged_n1000_p0.json", cfg.n_sst2, cfg.task_templated),
                                ("ag_news", "ag_news/train_merged_n1000_p0.05.json", cfg.n_agnews, 0.0)):
        # flag "finetune" only: the AG News mix also holds injected harmful ("unsafe") rows.
        pool = [r for r in json.load(open(tasks / rel)) if r.get("flag") == "finetune"]
        # Short inputs only: beyond max_length (96 tokens) a prompt loses its *start*, i.e. the
        # instruction that names the labels. The template alone is ~60 tokens, so templated rows
        # are SST-2 only (short phrases); AG News rows are unwrapped short articles.
        pool = [r for r in pool if len(unwrap_alpaca_template(r["instruction"])) <= (260 if name == "ag_news" else 160)]
        # Equal rows per label: short AG News articles are mostly Sci/Tech, and a skewed label
        # prior would teach "always answer X" rather than following the instruction.
        by_label: dict[str, list[dict]] = {}
        for r in pool:
            by_label.setdefault(r["output"].strip(), []).append(r)
        picked = [r for lab in sorted(by_label) for r in rng.sample(by_label[lab], min(n // len(by_label), len(by_label[lab])))]
        for k, r in enumerate(rng.sample(picked, len(picked))):
            templated = k < round(n * share)
            prompt = r["instruction"].strip() if templated else unwrap_alpaca_template(r["instruction"])
            rows.append(_row(f"{name}-{k}", prompt, r["output"].strip(), f"{name}_train"))
    xs = xstest_prompts(data, "train", "safe")[: cfg.n_xstest]
    if xs and distill is not None:
        for k, (p, a) in enumerate(zip(xs, distill(xs))):
            if a and not keyword_refusal(a):  # only compliant self-answers teach compliance
                rows.append(_row(f"xstest-{k}", p, a, "xstest_selfdistill"))
    rng.shuffle(rows)
    return rows


def _distill(cfg: AlignConfig, prompts: list[str], cache: Path) -> list[str]:
    """The base model's own greedy answers, cached by (model, prompts, length).

    Generation is the slow part of building the mix, and it does not depend on the training
    settings, so recipe variants reuse it.
    """
    from sot_core.eval.evaluate import generate

    key = digest(json.dumps([model_fingerprint(cfg.base_model), prompts, cfg.distill_tokens]), n=12)
    path = cache / f".distill-{key}.json"
    if path.exists():
        answers = json.loads(path.read_text())
    else:
        model, tok = load_causal_lm(cfg.base_model)
        answers = dict(zip(prompts, generate(model, tok, prompts, cfg.distill_tokens, 16)))
        atomic_write_text(json.dumps(answers), path)
    return [answers.get(p, "") for p in prompts]


def align(cfg: AlignConfig | None = None, cache_dir: str | Path | None = None, data_dir: str | Path | None = None,
          progress: Callable[[str], None] | None = None) -> Path:
    """Build (or fetch from cache) the aligned base model folder.

    Returns
    -------
    Path
        ``<cache_dir>/aligned-<key>``: a full ``save_pretrained`` model + tokenizer, with
        ``align_manifest.json`` (recipe, data mix counts, training manifest, timings).
    """
    from sot_core.eval.eval_sets import shared_data_dir

    cfg = cfg or AlignConfig()
    say = progress or (lambda s: None)
    cache = Path(cache_dir or default_model_cache())
    final = cache / f"aligned-{cfg.key()}"
    if (final / "align_manifest.json").exists():
        return final
    data = Path(data_dir or shared_data_dir())
    work = cache / f".align-work-{cfg.key()}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    mix = work / "mix.jsonl"
    if not mix.exists():
        rows = build_alignment_rows(cfg, data, lambda ps: _distill(cfg, ps, cache))
        atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), mix)
    t_data = time.time() - t0
    say(f"mix ready ({t_data:.0f}s)")
    adapter = train_lora(mix, cfg.base_model, work / "lora", cfg.train,
                         progress=lambda s, n, l: say(f"step {s}/{n} loss {l:.3f}") if s % 10 == 0 or s == n else None)
    t_train = time.time() - t0 - t_data
    from peft import PeftModel

    base, tok = load_causal_lm(cfg.base_model)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    counts: dict[str, int] = {}
    for line in open(mix):
        src = json.loads(line)["source"]
        counts[src] = counts.get(src, 0) + 1
    with atomic_dir(final, mode=0o755, keep_if="config.json") as tmp:
        merged.save_pretrained(tmp)
        copy_tokenizer_files(resolve_model_path(cfg.base_model), tmp)
        manifest = {"recipe": asdict(cfg), "key": cfg.key(), "mix_counts": counts,
                    "train_manifest": json.loads((adapter / "manifest.json").read_text()),
                    "seconds_data": round(t_data, 1), "seconds_train": round(t_train, 1)}
        (tmp / "align_manifest.json").write_text(json.dumps(manifest, indent=2))
    return final


def main(argv: list[str] | None = None) -> None:
    from sot_core.eval.evaluate import EvalSpec, evaluate_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--eval", action="store_true", help="measure refusal / over-refusal after aligning")
    ap.add_argument("--eval-base", action="store_true", help="also measure the unaligned base")
    ap.add_argument("--n-harmful", type=int, default=200)
    ap.add_argument("--n-benign", type=int, default=100)
    ap.add_argument("--n-xstest", type=int, default=125)
    ap.add_argument("--n-utility", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n-refusal", type=int, default=None, help="recipe variant: refusal rows (default: AlignConfig's)")
    ap.add_argument("--n-alpaca", type=int, default=None, help="recipe variant: Alpaca rows (default: AlignConfig's)")
    args = ap.parse_args(argv)
    cfg = AlignConfig()
    if args.n_refusal is not None:
        cfg.n_refusal = args.n_refusal
    if args.n_alpaca is not None:
        cfg.n_alpaca = args.n_alpaca
    if args.threads:
        cfg.train.num_threads = args.threads
    path = align(cfg, args.cache_dir, progress=lambda s: print(s, flush=True))
    print(path)
    if args.eval:
        spec = EvalSpec(n_harmful=args.n_harmful, n_benign=args.n_benign, n_xstest=args.n_xstest, utility_task="sst2",
                        n_utility=args.n_utility, max_new_tokens=args.max_new_tokens)
        out = {"aligned": evaluate_model(str(path), None, spec)}
        if args.eval_base:
            out["base"] = evaluate_model(cfg.base_model, None, spec)
        for v in out.values():
            v.pop("spec", None)
        (path / "align_eval.json").write_text(json.dumps(out, indent=2))
        print(json.dumps({k: {m: v for m, v in r.items() if m != "examples"} for k, r in out.items()}, indent=2))


if __name__ == "__main__":
    main()
