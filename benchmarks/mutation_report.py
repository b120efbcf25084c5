"""The report of `benchmarks.mutation`: ``results.json`` and ``README.md`` in the results folder."""
from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

_STATUSES = ("killed", "timeout", "survived", "error", "not run", "excluded")
NO_TEST = "no test runs this statement"
_C, _S, _P, _D = "sot_core/ot/costs.py", "sot_core/ot/sinkhorn.py", "sot_core/ot/push_pull.py", "sot_core/ot/dca.py"
_E, _R, _B = "sot_core/curate/select.py", "sot_core/curate/report.py", "sot_core/curate/budget.py"
_N = "sot_core/curate/neighbours.py"
_BOUNDARY = "equivalent: the two differ only when a float equals the threshold exactly"
_DEFAULT = "equivalent: a default every caller overrides (push_pull and sinkhorn_log pass tol and max_iter)"
_SPEED = "equivalent in results: only speed (or memory) changes"
_EXACT = _SPEED + ": more rows redone by the exact search; with the exact index (the tests' sizes) the same neighbours"
_GUARD = ("not killed: the anchor guard's share is 0 on every test anchor whether or not its rows are scored "
          "(a safe anchor sits where the pull puts the lowest scores)")
# Survivors that no test can kill because the program behaves the same (or that only tests outside the
# selection kill), as (file, a fragment of the mutated line, change, why). Keyed by code, not by line
# number, so that edits and splits of a module do not stale them; `explain` looks a mutant up.
NOTES: list[tuple[str, str, str, str]] = [
    (_C, "IVF_MIN_ROWS = 100_000", "100000 -> 100001", _SPEED + ": the exact/IVF switch point (IVF recall: "
     "tests/test_ivf.py)"),
    (_C, "IVF_NPROBE = 32", "32 -> 33", _SPEED + ": IVF cells probed, a recall/speed knob (recall >= 0.95 tested)"),
    (_C, "IVF_TRAIN_ROWS = 100_000", "100000 -> 100001", _SPEED + ": IVF training sample size (recall tested)"),
    (_C, "np.abs(norms - 1.0) > _NORM_TOL", "> -> >=", _BOUNDARY + " (and |norm - 1| is never exactly 1e-3 in "
     "float64 arithmetic near 1)"),
    (_C, "rng = np.random.default_rng(0)", "0 -> 1", "equivalent: another fixed seed of the IVF training sample "
     "(recall tested, not the sample)"),
    (_C, "faiss.get_num_gpus() > 0", "0 -> 1", "equivalent on this machine: faiss-cpu reports 0 GPUs (the GPU "
     "path: benchmarks.gpu_check)"),
    (_C, "short = np.flatnonzero((idx < 0)", "< -> <=", _EXACT),
    (_C, "short = np.flatnonzero((idx < 0)", "< -> >=", _EXACT),
    (_C, "short = np.flatnonzero((idx < 0)", "0 -> 1", _EXACT),
    (_C, "np.clip(missing_sum / (m - k), kth, 2.0)", "2.0 -> 4.0", "not pinned: the two differ only for a row "
     "whose missing costs all exceed 2, which rows inside the 1e-3 norm tolerance allow (up to 2 + 2e-3); the "
     "clip then sets the fill to 2, the mutant to their true mean; both are within the tolerance"),
    (_S, "g_init: torch.Tensor | None = None, tol: float = 1e-4,", "0.0001 -> 0.0002", _DEFAULT),
    (_S, "max_iter: int = 1000, eps_start: float | None = None,", "1000 -> 1001", _DEFAULT),
    (_S, "if err <= tol:", "<= -> <", _BOUNDARY),
    (_S, "converged=err <= tol)", "<= -> <", _BOUNDARY),
    (_S, "tol: float = 1e-4, max_iter: int = 1000,", "0.0001 -> 0.0002", _DEFAULT),
    (_S, "tol: float = 1e-4, max_iter: int = 1000,", "1000 -> 1001", _DEFAULT),
    (_S, "log_u = torch.full((n,), -math.log(n)", "-x -> x", "equivalent: a constant added to log u shifts f and "
     "g by opposite constants; w, the plan and the value do not change"),
    (_S, "for _ in range(max_iter + 1):", "1 -> 2", "equivalent: the loop always stops at n_iter >= max_iter "
     "before the extra pass"),
    (_S, "if err <= tol or n_iter >= max_iter:", "<= -> <", _BOUNDARY),
    (_P, "config.validate()", "statement -> pass", "equivalent: the config is frozen and validated itself when it "
     "was made"),
    (_P, "weights /= weights.sum()", "/ -> *", "equivalent: a float64 softmax already sums to 1 within 1e-16"),
    (_P, "weights /= weights.sum()", "statement -> pass", "equivalent: a float64 softmax already sums to 1 within "
     "1e-16"),
    (_P, "if not err <= config.sinkhorn_tol", "<= -> <", _BOUNDARY),
    (_P, "if ess < config.min_ess * n:", "< -> <=", _BOUNDARY),
    (_D, "return False", "return x -> return None", "equivalent: the caller tests the result's truth, and None "
     "is as false"),
    (_D, "step: int = 0", "0 -> 1", "equivalent: the outer loop sets the step before anything reads it"),
    (_D, "if self.residual <= cfg.outer_tol:", "<= -> <", _BOUNDARY),
    (_D, "elapsed > cfg.max_seconds", "> -> >=", _BOUNDARY),
    (_D, "if now - self.last_log >= _LOG_EVERY_S:", ">= -> >", _BOUNDARY),
    (_E, 'if scheme == "uniform" or len(weights) == 0:', "0 -> 1", "equivalent: one kept row gets training "
     "weight 1 either way (mean 1)"),
    (_E, "for _ in range(200):", "200 -> 201", "equivalent: the bisection reaches float precision long before "
     "200 steps"),
    (_E, "np.clip(np.exp(mid) * w, lo, hi).mean() < 1.0", "< -> <=", _BOUNDARY),
    (_E, "json.dumps(summary, indent=2, default=float)", "2 -> 3", "equivalent: run.json's indentation only"),
    (_E, "/ n if n else 0.0", "0.0 -> 1.0", "equivalent: an empty pool selects nothing at any fraction"),
    (_B, "FORMAT = 3", "3 -> 4", "equivalent in results: the stored cross-fit's cache-key version (which cached "
     "fits are reused, not what a fit holds)"),
    (_B, "FORMAT = 4", "4 -> 5", "equivalent in results: the stored cross-fit's cache-key version (which cached "
     "fits are reused, not what a fit holds)"),
    (_N, "if k <= 0:", "<= -> <", "equivalent: at k = 0 (a one-row pool) the search for k + 1 = 1 finds the row "
     "itself, which is dropped: the same (1, 0) list"),
    (_B, "@ y.astype(np.float64).T, 0.0, 2.0)", "2.0 -> 4.0", "equivalent: 1 - <x, y> of unit rows exceeds 2 only "
     "by float rounding"),
    (_B, "iters: int = 25", "25 -> 26", "equivalent: spherical k-means on the tests' clusters is converged long "
     "before 25 steps"),
    (_B, "big = len(x) * len(y) > DENSE_LIMIT", "> -> >=", _BOUNDARY.replace("a float equals", "a count (cost entries, reference rows) equals")),
    (_B, "big = len(x) * len(y) > DENSE_LIMIT", "* -> /", "not killed: the dense/kNN switch at 2e7 cost entries; "
     "only a problem that large tells the two apart (the kNN costs themselves: tests/test_costs.py)"),
    (_B, "int(np.ceil(recall * len(s) - 1e-9)) - 1]", "1e-09 -> 2e-09", "equivalent: a guard against float error "
     "in recall * m; any tolerance far below 1/m gives the same rank"),
    (_B, "w = np.maximum(w, 1e-300) / w.sum()", "1e-300 -> 2e-300", "equivalent: a floor for log(0); no weight "
     "of a solve is that small"),
    (_B, "w = np.maximum(w, 1e-300) / w.sum()", "/ -> *", "equivalent: the solver's weights already sum to 1 "
     "within 1e-16"),
    (_B, "np.log(np.maximum(a, 1e-300))", "1e-300 -> 2e-300", "equivalent: a floor for log(0); anchor masses "
     "are positive"),
    (_B, "def cluster_folds(x: np.ndarray, folds: int, seed: int = 0,", "0 -> 1", "not pinned: another default "
     "seed gives another valid split (cluster_folds is not used by the pipeline; its test passes a seed)"),
    (_B, "centres = x[rng.choice(n, k, replace=False)]", "False -> True", "not killed: initial centres drawn with "
     "replacement give the same clusters on the test's draw"),
    (_B, "centres[c] = v / max(np.linalg.norm(v), 1e-12)", "1e-12 -> 2e-12", "equivalent: a floor for a zero "
     "sum; a non-empty cluster of unit rows never sums to that little"),
    (_B, "big = len(x) * len(y) > DENSE_LIMIT and len(y) > DEFAULT_KNN", "and -> or", "not killed: small folds "
     "get kNN-64 costs instead of dense ones; with the mean fill their scores differ too little for the tests"),
    (_B, "big = len(x) * len(y) > DENSE_LIMIT and len(y) > DEFAULT_KNN", "> -> <=", "not killed: the dense/kNN "
     "switch; a mutant sends small folds to kNN-64 costs or keeps them dense, and with the mean fill the scores "
     "differ too little for the tests"),
    (_B, "checked = anchor[:check_anchor_rows] if anchor is not None else None", "is not -> is", _GUARD),
    (_B, "if checked is not None else np.zeros(0)", "is not -> is", _GUARD),
    (_B, "if checked is not None else np.zeros(0)", "0 -> 1", _GUARD),
    (_R, 'lines += [""]', "statement -> pass", "equivalent for Markdown readers: the heading that follows ends "
     "the solver table without the blank line (CommonMark with tables, markdown-it, reads the same blocks)"),
    (_B, "scorer = CombinedScorer(scorer, pool, anchor, harmful[fold != f], seed)", "!= -> ==", "not killed: a "
     "discriminant fitted on the held-out fold instead of the rest still meets the tests' recall on the toy "
     "clouds"),
    (_E, 'failpoint("publish.', "statement -> pass", "a fault-injection hook: killed by "
     "tests/test_fault_injection.py (slow lane: it kills a real `sot` process, outside this selection)"),
]


def explain(m: dict) -> str | None:
    """Why survivor `m` (a mutant's record) cannot be killed, from `NOTES`; None when unexplained."""
    for file, fragment, change, why in NOTES:
        if m["file"] == file and m["change"] == change and fragment in m["code"]:
            return why
    return None


def equivalent(m: dict) -> bool:
    """Whether survivor `m` has a note saying why no test can kill it (not one saying no test does yet)."""
    why = explain(m)
    return bool(why) and not why.startswith(("not killed", "not pinned"))


def _annotate(mutants: list[dict]) -> None:
    """Each survivor's note from `NOTES` (or that no test runs it); each excluded site's reason."""
    for m in mutants:
        if m["status"] == "excluded":
            m["note"] = "excluded by `# pragma: no mutate`: " + m["excluded"]
        elif m["status"] == "survived" and (m.get("note") != NO_TEST or m.get("rerun_tests")):
            m["note"] = explain(m) or ""


def _score(rows: list[dict]) -> dict:
    counts = Counter(r["status"] for r in rows)
    scored = sum(counts[s] for s in ("killed", "timeout", "survived"))
    dead = counts["killed"] + counts["timeout"]
    # survivors explained as equivalent (same behaviour) or as killed by tests outside the selection
    # survivors with a reason: equivalent, or killed by a test outside the selection ("not killed" /
    # "not pinned" notes say why no test kills one, which is no equivalence)
    explained = sum(r["status"] == "survived" and bool(r.get("note")) and r["note"] != NO_TEST
                    and not r["note"].startswith(("not killed", "not pinned")) for r in rows)
    return {"mutants": len(rows), **{s: counts[s] for s in _STATUSES}, "scored": scored,
            "killed_or_timeout": dead, "score": round(dead / scored, 4) if scored else None, "explained": explained,
            "score_without_explained": round(dead / (scored - explained), 4) if scored > explained else None}


def _fate(m: dict) -> str:
    if m["status"] in ("killed", "timeout"):
        return f"killed by `{m['killed_by'] or 'the timeout'}` (rerun with the new tests)"
    return m.get("note") or "**unexplained**"


# The target applies per group: >= 90% of the scored mutants killed in each.
GROUPS = {"solver": (_S, _P, _D), "costs": (_C,), "selection": (_E, _R, _B, _N)}


def write_report(out: Path, mutants: list[dict], tests: list[str], seconds: float, rerun: bool = False,
                 rerun_seconds: float | None = None) -> dict:
    """Write the per-module and per-group scores, every mutant's verdict, the survivors and the
    excluded sites; returns the total."""
    out.mkdir(parents=True, exist_ok=True)
    _annotate(mutants)
    modules = sorted({m["file"] for m in mutants})
    per_module = {f: _score([m for m in mutants if m["file"] == f]) for f in modules}
    per_group = {g: _score([m for m in mutants if m["file"] in files]) for g, files in GROUPS.items()}
    total = _score(mutants)
    summary = {"command": "python -m benchmarks.mutation", "tests": tests, "seconds": round(seconds),
               "rerun_of_survivors": rerun, "rerun_seconds": None if rerun_seconds is None else round(rerun_seconds),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               **total, "per_group": per_group, "per_module": per_module, "mutants": mutants}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "README.md").write_text("\n".join(_readme(summary, mutants, total)) + "\n")
    return total


def _row(name: str, s: dict, runs: str = "") -> str:
    score = "" if s["score"] is None else f"{s['score']:.1%}"
    clean = "" if s["score_without_explained"] is None else f"{s['score_without_explained']:.1%}"
    return (f"| {name} | {s['mutants']} | {s['excluded']} | {s['killed']} | {s['timeout']} | {s['survived']} | "
            f"{s['explained']} | {s['error']} | {s['not run']} | {score} | {clean} |" + (f" {runs} |" if runs else ""))


def _readme(summary: dict, mutants: list[dict], total: dict) -> list[str]:
    head = ("| {} | mutants | excluded (pragma) | killed | timeout | survived | of which explained | error | "
            "not run | raw score | score without the explained |")
    lines = [f"# Mutation testing: {total['killed_or_timeout']} of {total['scored']} mutants killed "
             f"({total['score']:.1%})" + (f"; {total['not run']} not run" if total["not run"] else ""), "",
             f"`python -m benchmarks.mutation` ({summary['finished']}, {summary['machine']}, shared load: "
             f"load average {summary['load_average_at_end']} at the end; {summary['seconds']} s"
             + (f"; the survivors' rerun {summary['rerun_seconds']} s" if summary["rerun_of_survivors"] else "")
             + "). Raw score: killed (with timeouts) over the mutants run; excluded sites are not run.", "",
             "Per group (the issue's target: >= 90% raw in each):", "", head.format("group"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(g, s) for g, s in summary["per_group"].items()]
    lines += ["", head.format("module") + " verdicts from the run finished |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f, s in summary["per_module"].items():
        runs = ", ".join(sorted({m.get("run") or summary["finished"] for m in mutants if m["file"] == f}))
        lines.append(_row(f, s, runs))
    lines.append(_row("**total**", total, " "))
    survivors = [m for m in mutants if m["status"] == "survived" or m.get("first_run") == "survived"]
    lines += ["", f"## Survivors of the first run ({len(survivors)}) and their fate", "",
              "| where | operator | change | code | tests run | fate |", "|---|---|---|---|---|---|"]
    lines += [_mutant_row(m, m["tests"], _fate(m)) for m in sorted(survivors, key=_where)]
    excluded = [m for m in mutants if m["status"] == "excluded"]
    lines += ["", f"## Excluded by `# pragma: no mutate` ({len(excluded)} mutants)", "",
              "| where | operator | change | code | tests run | reason |", "|---|---|---|---|---|---|"]
    lines += [_mutant_row(m, 0, m["excluded"]) for m in sorted(excluded, key=_where)]
    return lines


def _where(m: dict) -> tuple:
    return m["file"], m["line"], m["col"]


def _mutant_row(m: dict, tests: int, fate: str) -> str:
    code = m["code"].replace("|", "\\|")
    return f"| {m['file']}:{m['line']} | {m['operator']} | `{m['change']}` | `{code}` | {tests} | {fate} |"
