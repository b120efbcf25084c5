"""Compare two fine-tuning arms over several training seeds, paired on the same prompts.

On the general pool two training seeds of one arm differ by 1-2 points of harmful compliance
(`safety_e2e`), as much as the selection-versus-selection gaps, so a one-seed paired interval can
exclude 0 by chance. This script averages each arm's 0/1 verdicts over its seeds prompt by prompt,
then takes the paired difference of the averages with a bootstrap over prompts. A prompt's seeds
stay together in every resample (a cluster bootstrap), so the interval covers prompt sampling; with
only a few seeds it does not cover seed-to-seed variation beyond them, which the per-seed rows of
the output show. No model is trained: it reads the per-prompt verdicts `safety_e2e` saved.

    python -m benchmarks.seed_pooled            # SOT vs classifier + guard, 30% replay, seeds 0 and 1
    python -m benchmarks.seed_pooled --a sot_replay_0.2,sot_replay_0.2_seed1 \\
        --b instance_baseline_replay_0.2,instance_baseline_replay_0.2_seed1 --out /tmp/pooled_0.2.json

Output: results/seed_pooled/general.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, load_arms, result_path
from sot_core.eval.metrics import paired_difference
from sot_core.io import atomic_write_text

DEFAULT_A = "sot_replay_0.3,sot_replay_0.3_seed1"
DEFAULT_B = "instance_baseline_replay_0.3,instance_baseline_replay_0.3_seed1"


def pooled_difference(a_seeds: list[np.ndarray], b_seeds: list[np.ndarray], n_boot: int = 10000) -> dict:
    """Mean over prompts of (A's seed-mean verdict - B's seed-mean verdict), with a 95% bootstrap
    interval over prompts, in points. Each input is a list of 0/1 arrays, one per seed, same prompts."""
    a, b = np.mean(a_seeds, axis=0), np.mean(b_seeds, axis=0)
    pd = paired_difference(a, b, n_boot=n_boot)  # its McNemar p needs 0/1 pairs, so it is not reported
    return {"diff": round(100 * pd["diff"], 2), "ci_low": round(100 * pd["ci_low"], 2),
            "ci_high": round(100 * pd["ci_high"], 2), "n_prompts": pd["n"],
            "per_seed_rates": {"a": [round(100 * float(x.mean()), 2) for x in a_seeds],
                               "b": [round(100 * float(x.mean()), 2) for x in b_seeds]}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verdicts", nargs="+", type=Path,
                    default=sorted((RESULTS / "safety_e2e").glob("general_budget*.verdicts.json")))
    ap.add_argument("--a", default=DEFAULT_A, help="arm A's seeds: arm names, comma-separated")
    ap.add_argument("--b", default=DEFAULT_B, help="arm B's seeds: arm names, comma-separated")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    a_names, b_names = args.a.split(","), args.b.split(",")
    arms = load_arms(args.verdicts, require=a_names + b_names)
    report = {"a": a_names, "b": b_names, "verdicts": [p.name for p in args.verdicts],  # no machine paths in results
              "note": "diff = A minus B in points, seeds averaged per prompt, bootstrap over prompts"}
    for judge in arms[a_names[0]]:
        report[judge] = pooled_difference([arms[n][judge] for n in a_names], [arms[n][judge] for n in b_names])
    atomic_write_text(json.dumps(report, indent=2), Path(args.out or result_path("seed_pooled", "general.json")))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
