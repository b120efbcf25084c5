"""Rebuild the bundled demo data in data/demo/ from ../shared/data (MIT sources only).

pool.jsonl        900 GSM8K train rows + 100 harmful rows (PyRIT objective scorer set, human_score=1), shuffled
safe_anchor.jsonl 50 other GSM8K train rows (same task as the pool)
harmful_ref.jsonl PyRIT many-shot jailbreak examples whose verdict starts with "Harmful" (another source)
labels.csv        id,label for the pool (label 1 = injected harmful row)
"""
from __future__ import annotations

import csv
import glob
import io
import json
import random
import sys
from pathlib import Path

SHARED = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
OUT = Path(__file__).resolve().parent.parent / "data" / "demo"


def read_pyrit_csv(path: str) -> list[dict]:
    lines = Path(path).read_text(encoding="utf-8").splitlines(True)
    while lines and lines[0].startswith("#"):  # PyRIT puts dataset_version (and other) comments first
        lines = lines[1:]
    return list(csv.DictReader(io.StringIO("".join(lines))))


def main() -> None:
    rng = random.Random(20260117)
    gsm = [json.loads(line) for line in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()]
    picked = rng.sample(range(len(gsm)), 950)
    benign = [
        {"id": f"gsm8k-train-{i}", "prompt": gsm[i]["question"], "response": gsm[i]["answer"]} for i in picked[:900]
    ]
    anchor = [
        {"id": f"gsm8k-train-{i}", "prompt": gsm[i]["question"], "response": gsm[i]["answer"]} for i in picked[900:]
    ]
    harmful = []
    for path in sorted(glob.glob(str(SHARED / "pyrit_datasets" / "scorer_evals" / "objective" / "*.csv"))):
        for k, row in enumerate(read_pyrit_csv(path)):
            if row["human_score"].strip() == "1":
                harmful.append(
                    {"id": f"pyrit-objective-{Path(path).stem}-{k}", "prompt": row["objective"], "response": row["assistant_response"]}
                )
    harmful = rng.sample(harmful, 100)
    pool = benign + harmful
    rng.shuffle(pool)
    many_shot = json.loads((SHARED / "pyrit_datasets" / "jailbreak" / "many_shot_examples.json").read_text())
    reference = [
        {"id": f"pyrit-manyshot-{k}", "prompt": r["user"], "response": r["assistant"]}
        for k, r in enumerate(many_shot)
        if r["category"].strip().lower().startswith("harmful")
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in [("pool", pool), ("safe_anchor", anchor), ("harmful_ref", reference)]:
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    harmful_ids = {r["id"] for r in harmful}
    with open(OUT / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        for r in pool:
            w.writerow([r["id"], int(r["id"] in harmful_ids)])
    print(f"pool {len(pool)} ({len(harmful)} harmful), anchor {len(anchor)}, reference {len(reference)} -> {OUT}")
    write_refusals()


def write_refusals() -> None:
    """data/refusals/pyrit_refusals.jsonl: PyRIT refusal-scorer rows a human labelled as refusals
    (human_score = 1), deduplicated by response; the optional refusal part of a safe anchor."""
    rows, seen = [], set()
    for path in sorted(glob.glob(str(SHARED / "pyrit_datasets" / "scorer_evals" / "refusal_scorer" / "*.csv"))):
        for k, row in enumerate(read_pyrit_csv(path)):
            if row["human_score"].strip() == "1" and row["assistant_response"] not in seen:
                seen.add(row["assistant_response"])
                rows.append({"id": f"pyrit-refusal-{Path(path).stem}-{k}", "prompt": row["objective"],
                             "response": row["assistant_response"]})
    out = OUT.parent / "refusals"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "pyrit_refusals.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"refusals {len(rows)} -> {out}")


if __name__ == "__main__":
    main()
