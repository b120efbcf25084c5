"""Curation quality: SOT (with ablations) against instance-level baselines on labelled pools.

Pools:
  * the shared harmful fine-tuning mixes (SST-2, AG News, GSM8K with BeaverTails unsafe rows;
    `flag` is the label), anchor = 50 rows of the same task's held-out split;
  * a general-instruction pool built here: Alpaca-demo instructions, ~10% BeaverTails harmful
    answers and ~10% refusals to harmful prompts (safety-tuned-llamas), anchor = 50 other Alpaca rows.
Harmful reference (another source than every injected row): PyRIT many-shot examples judged
harmful plus PyRIT objective-scorer rows with human_score = 1.

    python benchmarks/curation_quality.py [--shared ../shared/data] [--json FILE] [--md FILE]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sot_core.curate import pipeline  # noqa: E402
from sot_core.curate.baselines import BASELINES  # noqa: E402
from sot_core.ot.costs import cosine_costs  # noqa: E402
from sot_core.data.loaders import load_rows  # noqa: E402
from sot_core.eval.metrics import auroc, harmful_kept  # noqa: E402
from sot_core.ot.push_pull import PushPullConfig, solve_push_pull  # noqa: E402
from sot_core.curate.select import select_top  # noqa: E402
from sot_core.data.store import Store  # noqa: E402

MIXES = [("sst2", "sst2/train_merged_n1000_p0.05.json", "sst2/val.json"),
         ("sst2_p0.1", "sst2/train_merged_n1000_p0.1.json", "sst2/val.json"),
         ("sst2_p0.2", "sst2/train_merged_n1000_p0.2.json", "sst2/val.json"),
         ("ag_news", "ag_news/train_merged_n1000_p0.05.json", "ag_news/test.json"),
         ("gsm8k", "gsm8k/train_merged_n1000_p0.05.json", "gsm8k/test.json")]


def write_jsonl(rows, path):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def build_inputs(shared: Path, work: Path) -> dict:
    """Write every pool, anchor and the reference as JSONL files; return the labelled tasks."""
    rng = random.Random(0)
    mixes = shared / "harmful_finetune_mixes_beavertails"
    tasks = {}
    for name, pool_file, heldout_file in MIXES:
        pool = json.loads((mixes / pool_file).read_text())
        rows = [{"id": f"{name}-{i}", "instruction": r["instruction"], "input": r["input"], "output": r["output"]}
                for i, r in enumerate(pool)]
        heldout = json.loads((mixes / heldout_file).read_text())
        anchor = [{"id": f"anchor-{i}", **heldout[i]} for i in rng.sample(range(len(heldout)), 50)]
        tasks[name] = {"pool": write_jsonl(rows, work / f"{name}_pool.jsonl"),
                       "anchor": write_jsonl(anchor, work / f"{name}_anchor.jsonl"),
                       "harmful": np.array([r["flag"] == "unsafe" for r in pool]), "refusal": None}
    # General-instruction pool: benign Alpaca, BeaverTails harmful answers, refusals to harmful prompts.
    alpaca = json.loads((shared / "alpaca_en_demo" / "alpaca_en_demo.json").read_text())
    picks = rng.sample(range(len(alpaca)), 850)
    unsafe = {r["output"]: r for f in (mixes / "sst2").glob("train_merged_*.json")
              for r in json.loads(f.read_text()) if r.get("flag") == "unsafe"}
    refusals = json.loads((shared / "safety_tuned_llamas" / "training" / "safety_only_data_Instructions.json").read_text())
    benign = [{"instruction": alpaca[i]["instruction"], "input": alpaca[i]["input"], "output": alpaca[i]["output"]}
              for i in picks[:800]]
    harmful = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]}
               for r in rng.sample(sorted(unsafe.values(), key=lambda r: r["output"]), 100)]
    refusal = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]}
               for r in rng.sample(refusals, 100)]
    kinds = ["benign"] * 800 + ["harmful"] * 100 + ["refusal"] * 100
    rows = benign + harmful + refusal
    order = list(range(len(rows)))
    rng.shuffle(order)
    rows = [{"id": f"general-{k}", **rows[i]} for k, i in enumerate(order)]
    kinds = np.array([kinds[i] for i in order])
    anchor = [{"id": f"anchor-{k}", **{f: alpaca[i][f] for f in ("instruction", "input", "output")}}
              for k, i in enumerate(picks[800:])]
    tasks["general"] = {"pool": write_jsonl(rows, work / "general_pool.jsonl"),
                        "anchor": write_jsonl(anchor, work / "general_anchor.jsonl"),
                        "harmful": kinds == "harmful", "refusal": kinds == "refusal"}
    # The same pool with 25 refusals (not in the pool) added to the anchor: the data-side way to
    # tell the method that a safe answer to a harmful prompt is wanted data.
    in_pool = {r["instruction"] for r in refusal}
    extra = [r for r in refusals if r["instruction"] not in in_pool]
    anchor_plus = anchor + [{"id": f"anchor-refusal-{k}", **{f: r[f] for f in ("instruction", "input", "output")}}
                            for k, r in enumerate(rng.sample(extra, 25))]
    tasks["general_refusal_anchor"] = {**tasks["general"],
                                       "anchor": write_jsonl(anchor_plus, work / "general_anchor_plus.jsonl")}
    many_shot = json.loads((shared / "pyrit_datasets" / "jailbreak" / "many_shot_examples.json").read_text())
    reference = [{"prompt": r["user"], "response": r["assistant"]} for r in many_shot
                 if r["category"].strip().lower().startswith("harmful")]
    for path in sorted((shared / "pyrit_datasets" / "scorer_evals" / "objective").glob("*.csv")):
        lines = path.read_text(encoding="utf-8").splitlines(True)
        text = "".join(line for line in lines if not line.startswith("#"))  # PyRIT's version comment
        reference += [{"prompt": r["objective"], "response": r["assistant_response"]}
                      for r in csv.DictReader(io.StringIO(text)) if r["human_score"].strip() == "1"]
    return {"tasks": tasks, "reference": write_jsonl(reference, work / "harmful_reference.jsonl")}


def embed_file(store: Store, path: str, encoder: str) -> np.ndarray:
    rows = load_rows(path)
    info = pipeline.ingest(store, path, rows, "bench")
    summary = pipeline.embed(store, info["dataset_id"], encoder, show_progress=False)
    return pipeline.load_embeddings(store, info["dataset_id"], summary["encoder_id"])


def evaluate(score: np.ndarray, weights_for_selection: np.ndarray, task: dict, keep: float = 0.8) -> dict:
    selected = select_top(weights_for_selection, keep)
    out = {"auroc": round(auroc(score, task["harmful"]), 4)}
    out.update({k: v for k, v in harmful_kept(selected, task["harmful"]).items() if k != "harmful_total"})
    if task["refusal"] is not None:
        out["refusals_kept_fraction"] = round(float(selected[task["refusal"]].mean()), 4)
    return out


SOT_VARIANTS = {
    "sot_push_pull": dict(mode="push-pull"),
    "sot_pull_only": dict(mode="pull"),
    "sot_push_only": dict(mode="push"),
    "sot_lam0.5": dict(lam=0.5),
    "sot_lam2": dict(lam=2.0),
    "sot_eps0.01": dict(eps=0.01),
    "sot_eps0.05": dict(eps=0.05),
    "sot_eps0.2": dict(eps=0.2),
}


def run(shared: Path, representations: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sot-bench-"))
    store = Store(os.environ.get("SOT_BENCH_HOME", REPO / ".sot-bench"))
    inputs = build_inputs(shared, work)
    results = {}
    for representation in representations:
        encoder = f"minilm:{representation}"
        harmful_ref = embed_file(store, inputs["reference"], encoder)
        for name, task in inputs["tasks"].items():
            if representation in ("response", "both") and task["refusal"] is None:
                continue  # these views concern the pool with refusals; contrast is checked everywhere
            pool, anchor = embed_file(store, task["pool"], encoder), embed_file(store, task["anchor"], encoder)
            c_anchor, c_harmful = cosine_costs(pool, anchor), cosine_costs(pool, harmful_ref)
            row = {}
            for method, fn in BASELINES.items():
                score = fn(pool, anchor, harmful_ref)
                row[method] = evaluate(score, -score, task)
            for variant, overrides in SOT_VARIANTS.items():
                cfg = PushPullConfig(**overrides)
                start = time.perf_counter()
                result = solve_push_pull(c_anchor if cfg.mode != "push" else None,
                                         c_harmful if cfg.mode != "pull" else None, cfg)
                row[variant] = {**evaluate(result.score, result.weights, task),
                                "seconds": round(time.perf_counter() - start, 2)}
            results[f"{name}/{representation}"] = row
            print(f"{name}/{representation}: " + ", ".join(
                f"{m} auroc={v['auroc']:.3f} kept={v['harmful_kept']}" for m, v in row.items()), flush=True)
    return results


def to_markdown(results: dict) -> str:
    methods = list(next(iter(results.values())).keys())
    lines = ["| pool / representation | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for name, row in results.items():
        cells = []
        for m in methods:
            v = row[m]
            cell = f"{v['auroc']:.3f} / {v['harmful_kept']}"
            if "refusals_kept_fraction" in v:
                cell += f" / {v['refusals_kept_fraction']:.0%}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--representations", default="pair,response,both,contrast")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "curation_quality.json"))
    p.add_argument("--md", default=str(REPO / "benchmarks" / "results" / "curation_quality.md"))
    p.add_argument("--results-page", default=str(REPO / "benchmarks" / "RESULTS.md"),
                   help="page whose generated block receives the table")
    args = p.parse_args()
    shared = Path(args.shared)
    if not shared.exists():
        sys.exit(f"shared data not found at {shared}: nothing to benchmark")
    results = run(shared, args.representations.split(","))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    md = (f"Machine: {machine}. Cells: AUROC / harmful rows kept at keep=80% [/ refusals kept].\n\n"
          + to_markdown(results) + "\n")
    Path(args.md).write_text(md)
    update_results_page(Path(args.results_page), md)
    print(md)


def update_results_page(page: Path, table_md: str) -> None:
    """Replace the generated block of benchmarks/RESULTS.md (between its markers) with `table_md`."""
    start, end = "<!-- curation-quality:start -->", "<!-- curation-quality:end -->"
    text = page.read_text() if page.exists() else ""
    block = f"{start}\n{table_md}{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += f"\n## Curation quality, full table (generated)\n\n{block}\n"
    tmp = page.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(page)


if __name__ == "__main__":
    main()
