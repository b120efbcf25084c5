"""Choose the refusal-replay dose on half of the held-out prompts, measure it on the other half.

`safety_e2e` measured the general pool's replay doses (0, 10%, 20%, 30%) on all 1,128 held-out
harmful prompts, and each larger dose was run because the one before was not within 3 points of the
aligned base (by a judge, or out of sample). Choice and measurement share prompts, so the "+2.8
points, within 3" of the 20% arm is optimistic. This script separates them: split the prompts at random into a choosing half
and a measuring half, pick the smallest dose whose arm is within `--margin` points of the base on
the choosing half (the recipe rule), and report that dose's gap on the measuring half, over many
random splits and, with a paired bootstrap interval, on one fixed split. No model is trained: it
reads the per-prompt verdicts `safety_e2e` saved.

    python -m benchmarks.replay_dose            # the general pool's SOT arms, both judges
    python -m benchmarks.replay_dose --arms 0=sot,0.1=sot_replay,0.2=sot_replay_0.2 --margin 3

Output: results/replay_dose/general.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, load_arms, result_path
from sot_core.eval.metrics import paired_difference
from sot_core.io import atomic_write_text

VERDICT_FILES = ("general_budget", "general_budget_replay", "general_budget_replay_0.2", "general_budget_replay_0.3")
DEFAULT_ARMS = "0=sot,0.1=sot_replay,0.2=sot_replay_0.2,0.3=sot_replay_0.3"


def choose_dose(gaps: list[tuple[float, float]], margin: float) -> float | None:
    """The smallest dose whose gap (points over the base) is at most `margin`; None if none is."""
    return next((dose for dose, gap in sorted(gaps) if gap <= margin), None)


def split_once(base: np.ndarray, doses: dict[float, np.ndarray], choose: np.ndarray, measure: np.ndarray,
               margin: float) -> tuple[float | None, float | None]:
    """(chosen dose, its gap in points on the measuring half) for one split of the prompt indices."""
    gap = lambda y, idx: 100 * (y[idx].mean() - base[idx].mean())  # noqa: E731
    dose = choose_dose([(d, gap(y, choose)) for d, y in doses.items()], margin)
    return dose, (None if dose is None else gap(doses[dose], measure))


def dose_split(base: np.ndarray, doses: dict[float, np.ndarray], margin: float = 3.0, splits: int = 1000,
               seed: int = 0) -> dict:
    """Over `splits` random halvings: how often each dose is chosen, and its gap on the other half."""
    rng, n = np.random.default_rng(seed), len(base)
    chosen, gaps = [], []
    for _ in range(splits):
        perm = rng.permutation(n)
        dose, gap = split_once(base, doses, perm[: n // 2], perm[n // 2 :], margin)
        chosen.append(dose)
        if gap is not None:
            gaps.append(gap)
    counts = {str(d): chosen.count(d) for d in sorted(doses)}
    counts["none"] = chosen.count(None)
    out = {"splits": splits, "chosen": counts, "full_prompt_gap": {str(d): round(100 * (y.mean() - base.mean()), 2)
                                                                    for d, y in sorted(doses.items())}}
    if gaps:
        out.update({"measured_gap_median": round(float(np.median(gaps)), 2),
                    "measured_gap_p05_p95": [round(float(np.quantile(gaps, q)), 2) for q in (0.05, 0.95)],
                    "share_within_margin_when_chosen": round(float(np.mean(np.array(gaps) <= margin)), 3)})
    # one fixed split with a paired interval, as a reader would run it once
    perm = np.random.default_rng(seed + 1).permutation(n)
    dose, _ = split_once(base, doses, perm[: n // 2], perm[n // 2 :], margin)
    out["fixed_split"] = {"chosen": dose}
    if dose is not None:
        pdiff = paired_difference(doses[dose][perm[n // 2 :]], base[perm[n // 2 :]])
        out["fixed_split"]["measured"] = {k: round(100 * v, 2) if k in ("diff", "ci_low", "ci_high") else v
                                          for k, v in pdiff.items()}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verdicts", nargs="+", type=Path,
                    default=[RESULTS / "safety_e2e" / f"{f}.verdicts.json" for f in VERDICT_FILES])
    ap.add_argument("--base-arm", default="aligned_base")
    ap.add_argument("--arms", default=DEFAULT_ARMS, help="DOSE=ARM pairs, comma-separated")
    ap.add_argument("--margin", type=float, default=3.0, help="points over the base the recipe may lose")
    ap.add_argument("--splits", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    arms = load_arms(args.verdicts)
    pairs = [p.split("=", 1) for p in args.arms.split(",")]
    missing = [a for _, a in pairs if a not in arms] + ([args.base_arm] if args.base_arm not in arms else [])
    if missing:
        raise SystemExit(f"no verdicts for arm(s) {missing} in {[str(p) for p in args.verdicts]}")
    report = {"verdicts": [str(p) for p in args.verdicts], "base_arm": args.base_arm, "arms": dict(pairs),
              "margin_points": args.margin}
    for judge in arms[args.base_arm]:
        doses = {float(d): arms[a][judge] for d, a in pairs}
        report[judge] = dose_split(arms[args.base_arm][judge], doses, args.margin, args.splits)
    atomic_write_text(json.dumps(report, indent=2), Path(args.out or result_path("replay_dose", "general.json")))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
