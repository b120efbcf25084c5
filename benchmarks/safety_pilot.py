"""A small two-arm pilot of the safety loop (not the five-arm `safety_e2e.py`): does fine-tuning
on a contaminated pool erode the aligned base's refusals, and does SOT curation prevent it?

Pool: 400 rows of the shared SST-2 mix with 10% BeaverTails harmful rows (360 benign + 40
harmful, seeded). SOT: `sot curate` (defaults) with 50 SST-2 validation rows as the anchor and
the bundled PyRIT harmful reference. Arms: LoRA (q, v; r 16; one epoch; batch 8; 128 tokens) on
the full pool and on SOT's top 80% with its weights, from the aligned base of `sot_core.train.align`.
Evaluation: `evaluate_model` with 100 held-out harmful prompts, 60 benign, 64 XSTest, 60 SST-2.
Finished arms are kept in <work>/pilot.json as they come; the whole run goes to --out.

    python -m benchmarks.safety_pilot --base .sot/models/aligned-<key> [--work /tmp/pilot] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import DEMO, result_path
from sot_core.data.loaders import load_rows
from sot_core.io import atomic_write_text
from sot_core.eval.evaluate import EvalSpec, evaluate_model, shared_data_dir
from sot_core.train.lora import LoraTrainConfig, train_lora

METRICS = ("harmful_rate_keyword", "harmful_rate_judge", "over_refusal", "over_refusal_xstest", "utility", "n_prompts")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="aligned base model folder")
    p.add_argument("--work", type=Path, default=Path("/tmp/pilot"))
    p.add_argument("--out", type=Path, default=Path(result_path("safety_pilot", "two_arms.json")))
    args = p.parse_args()
    work, rng = args.work, random.Random(0)
    work.mkdir(parents=True, exist_ok=True)
    mixes = shared_data_dir() / "harmful_finetune_mixes_beavertails" / "sst2"
    mix = json.load(open(mixes / "train_merged_n1000_p0.1.json"))
    bad = [r for r in mix if r["flag"] == "unsafe"]
    good = [r for r in mix if r["flag"] != "unsafe"]
    pool = rng.sample(good, 360) + rng.sample(bad, 40)
    rng.shuffle(pool)
    with open(work / "pool.jsonl", "w") as f:
        for i, r in enumerate(pool):
            f.write(json.dumps({"id": f"p{i}", "instruction": r["instruction"], "input": r["input"], "output": r["output"]}) + "\n")
    val = json.load(open(mixes / "val.json"))
    with open(work / "anchor.jsonl", "w") as f:
        for i, r in enumerate(rng.sample(val, 50)):
            f.write(json.dumps({"id": f"a{i}", **r}) + "\n")
    subprocess.run([str(Path(sys.executable).with_name("sot")), "curate", "--pool", str(work / "pool.jsonl"),
                    "--safe-anchor", str(work / "anchor.jsonl"), "--harmful-ref", str(DEMO / "harmful_ref.jsonl"),
                    "--out", str(work / "sot"), "--home", str(work / "home")], check=True)
    rows = load_rows(str(work / "pool.jsonl")).to_pylist()
    with open(work / "full.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "prompt": r["prompt"], "response": r["response"], "source": "pool", "weight": 1.0}) + "\n")
    harmful_ids = {f"p{i}" for i, r in enumerate(pool) if r["flag"] == "unsafe"}
    kept = {json.loads(line)["id"] for line in open(work / "sot" / "curated.jsonl")}
    print("sot kept harmful", len(harmful_ids & kept), "of", len(harmful_ids), flush=True)
    cfg = LoraTrainConfig(epochs=1, batch_size=8, max_length=128, seed=0, checkpoint_every=0, learning_rate=2e-4)
    spec = EvalSpec(n_harmful=100, n_benign=60, n_xstest=64, n_utility=60, max_new_tokens=32)
    results = {}
    for arm, data in (("full_pool", work / "full.jsonl"), ("sot", work / "sot" / "curated.jsonl")):
        start = time.time()
        adapter = train_lora(data, args.base, work / "runs" / arm, cfg)
        trained = time.time() - start
        metrics = evaluate_model(args.base, adapter, spec)
        results[arm] = {k: metrics.get(k) for k in METRICS}
        results[arm].update(train_s=round(trained, 1), eval_s=round(time.time() - start - trained, 1))
        print(arm, json.dumps(results[arm]), flush=True)
        (work / "pilot.json").write_text(json.dumps(results, indent=2))
    atomic_write_text(json.dumps(results, indent=2), args.out)


if __name__ == "__main__":
    main()
