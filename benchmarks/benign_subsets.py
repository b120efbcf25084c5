"""Does choosing *which benign rows* to train on change how much fine-tuning erodes refusals?

On the SST-2 benchmark the SOT and classifier arms drop every harmful row, so whatever erosion of
refusals remains comes from the benign rows. This study trains on two opposite 700-row subsets
of the pool's 900 benign rows, ranked by SOT's score of the e2e curation (higher = more
harmful-like):

* ``benign_low``: the 700 least harmful-like rows (what a curator that ranks benign rows could pick),
* ``benign_high``: the 700 most harmful-like rows (the two share 500 rows of the 900),

with the e2e's training and evaluation settings, and pairs their verdicts with the e2e's arms.

    python -m benchmarks.benign_subsets write [--work .sot/bench_e2e_v2/full]
    python -m benchmarks.safety_e2e --work .sot/bench_e2e_v2 --base .sot/models/aligned-27124fe751a7 \\
        --arms benign_low,benign_high --extra benign_low=F --extra benign_high=F \\
        --out benchmarks/results/benign_subsets/arms.json      # F: the files `write` printed
    python -m benchmarks.benign_subsets compare
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.common import REPO, RESULTS, read_verdicts, write_jsonl
from sot_core.io import atomic_write_text
from sot_core.eval.metrics import paired_difference


def write_subsets(work: Path, n: int = 700) -> dict[str, Path]:
    """The two subsets as curated files (uniform weights), from the e2e work folder."""
    table = pq.read_table(work / "curation" / "sot" / "weights.parquet").to_pydict()
    score = dict(zip(table["id"], table["score"]))
    pool = [json.loads(line) for line in open(work / "data" / "full_pool.jsonl")]
    sources = {r["source"] for r in pool}
    if sources != {"finetune", "unsafe"}:  # any other flag could let harmful rows pass as benign
        raise SystemExit(f"{work}: expected rows flagged finetune/unsafe, found {sorted(sources)}")
    benign = sorted((r for r in pool if r["source"] != "unsafe"), key=lambda r: score[r["id"]])
    if len(benign) < n:
        raise SystemExit(f"{work}: only {len(benign)} benign rows, need {n}")
    return {name: write_jsonl([{**r, "weight": 1.0} for r in rows], work / "data" / f"{name}.jsonl")
            for name, rows in (("benign_low", benign[:n]), ("benign_high", benign[-n:]))}


def compare(subsets: Path, main_run: Path) -> dict:
    """Paired differences (per judge) of each subset arm against the e2e's base and SOT arms, and
    of the low subset against the high one."""
    new, old = read_verdicts(subsets), read_verdicts(main_run)
    if new["benign_low"]["prompts"] != old["aligned_base"]["prompts"]:
        raise SystemExit("the two runs scored different prompts; pairing needs the same ones")
    judges = [j for j in new["benign_low"] if j != "prompts"]
    pairs = {"benign_low vs benign_high": (new["benign_low"], new["benign_high"])}
    for arm in ("benign_low", "benign_high"):
        for ref in ("aligned_base", "sot"):
            pairs[f"{arm} vs {ref}"] = (new[arm], old[ref])
    return {name: {j: paired_difference(a[j], b[j]) for j in judges} for name, (a, b) in pairs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--work", type=Path, default=REPO / ".sot" / "bench_e2e_v2" / "full")
    c = sub.add_parser("compare")
    c.add_argument("--subsets", type=Path, default=RESULTS / "benign_subsets" / "arms.verdicts.json")
    c.add_argument("--main-run", type=Path, default=RESULTS / "safety_e2e" / "sst2.verdicts.json")
    c.add_argument("--out", type=Path, default=RESULTS / "benign_subsets" / "paired.json")
    args = p.parse_args()
    if args.cmd == "write":
        for name, path in write_subsets(args.work).items():
            print(f"{name}={path}")
        return
    paired = compare(args.subsets, args.main_run)
    atomic_write_text(json.dumps(paired, indent=2), args.out)
    for name, by_judge in paired.items():
        print(name, "  ".join(f"{j} {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] p={d['p_mcnemar']:.3g}"
                              for j, d in by_judge.items()))


if __name__ == "__main__":
    main()
