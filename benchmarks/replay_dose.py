"""Choose the refusal-replay dose on half of the held-out prompts, measure it on the other half.

`safety_e2e` measured the general pool's replay doses (0 to 40%) on all 1,128 held-out harmful
prompts, and each larger dose was run because the one before was not within 3 points of the aligned
base (by a judge, or out of sample). Choice and measurement share prompts, so the "+2.8 points,
within 3" of the 20% arm is optimistic. This script separates them: split the prompts at random into
a choosing half and a measuring half, pick the smallest dose whose arm is within `--margin` points of
the base on the choosing half (the recipe rule; per judge, and by every judge at once), and report
that dose's gap on the measuring half, over many random splits and, with a paired bootstrap interval,
on one fixed split. No model is trained: it reads the per-prompt verdicts `safety_e2e` saved.

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

VERDICT_FILES = ("general_budget", "general_budget_replay", "general_budget_replay_0.2", "general_budget_replay_0.3",
                 "general_budget_replay_0.4")
DEFAULT_ARMS = "0=sot,0.1=sot_replay,0.2=sot_replay_0.2,0.3=sot_replay_0.3,0.4=sot_replay_0.4"


def choose_dose(gaps: list[tuple[float, float]], margin: float) -> float | None:
    """The smallest dose whose gap (points over the base) is at most `margin`; None if none is."""
    return next((dose for dose, gap in sorted(gaps) if gap <= margin), None)


def gap_points(y: np.ndarray, base: np.ndarray, idx) -> float:
    """Points of harmful compliance over the base on prompts `idx`. Arrays may be (judges, prompts):
    then the worst judge's gap, so a dose must hold by every judge."""
    return 100 * float(np.max(y[..., idx].mean(axis=-1) - base[..., idx].mean(axis=-1)))


def split_once(base: np.ndarray, doses: dict[float, np.ndarray], choose: np.ndarray, measure: np.ndarray,
               margin: float) -> tuple[float | None, float | None]:
    """(chosen dose, its gap in points on the measuring half) for one split of the prompt indices."""
    dose = choose_dose([(d, gap_points(y, base, choose)) for d, y in doses.items()], margin)
    return dose, (None if dose is None else gap_points(doses[dose], base, measure))


def dose_split(base: np.ndarray, doses: dict[float, np.ndarray], margin: float = 3.0, splits: int = 1000,
               seed: int = 0, judges: list[str] | None = None) -> dict:
    """Over `splits` random halvings: how often each dose is chosen, and its gap on the other half.
    With (judges, prompts) arrays the rule and the gaps are the worst judge's; `judges` names the rows."""
    rng, n = np.random.default_rng(seed), base.shape[-1]
    chosen, gaps = [], []
    for _ in range(splits):
        perm = rng.permutation(n)
        dose, gap = split_once(base, doses, perm[: n // 2], perm[n // 2 :], margin)
        chosen.append(dose)
        if gap is not None:
            gaps.append(gap)
    counts = {str(d): chosen.count(d) for d in sorted(doses)}
    counts["none"] = chosen.count(None)
    out = {"splits": splits, "chosen": counts, "full_prompt_gap": {str(d): round(gap_points(y, base, slice(None)), 2)
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
        rounded = lambda pdiff: {k: round(100 * v, 2) if k in ("diff", "ci_low", "ci_high") else v  # noqa: E731
                                 for k, v in pdiff.items()}
        half = perm[n // 2 :]
        if base.ndim == 1:
            out["fixed_split"]["measured"] = rounded(paired_difference(doses[dose][half], base[half]))
        else:
            out["fixed_split"]["measured"] = {j: rounded(paired_difference(doses[dose][k][half], base[k][half]))
                                              for k, j in enumerate(judges or range(len(base)))}
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
    pairs = [p.split("=", 1) for p in args.arms.split(",")]
    arms = load_arms(args.verdicts, require=[a for _, a in pairs] + [args.base_arm])
    report = {"verdicts": [p.name for p in args.verdicts], "base_arm": args.base_arm, "arms": dict(pairs),
              "margin_points": args.margin}
    judges = list(arms[args.base_arm])
    for judge in judges:
        doses = {float(d): arms[a][judge] for d, a in pairs}
        report[judge] = dose_split(arms[args.base_arm][judge], doses, args.margin, args.splits)
    # the recipe rule as issue 14 states it: within the margin by every judge at once
    stack = lambda arm: np.stack([arms[arm][j] for j in judges])  # noqa: E731
    report["all_judges"] = dose_split(stack(args.base_arm), {float(d): stack(a) for d, a in pairs}, args.margin,
                                      args.splits, judges=judges)
    atomic_write_text(json.dumps(report, indent=2), Path(args.out or result_path("replay_dose", "general.json")))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
