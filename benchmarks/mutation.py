"""Mutation testing of the solver, costs and selection modules: every standard mutant, its tests.

    python -m benchmarks.mutation [--module PATH ...] [--survivors] [--out benchmarks/results/mutation]

mutmut and cosmic-ray are not used: this machine's local package index has neither, and both
would spend most of a run importing torch once per mutant. Instead:

1. the repository is copied to a work folder (without .venv, .git, stores and results);
2. `benchmarks.mutants.generate` makes every mutant of each module in `TARGETS` (arithmetic,
   comparison, boolean, ``not``, unary minus, constants, ``return None``, statement removal;
   never docstrings, messages, ``raise``/``assert`` or logging);
3. the test selection `TESTS` runs once under a line tracer (`benchmarks.mutation_worker`),
   which records which tests run which lines of the targets, and how long each test takes;
4. each mutant runs only the tests that execute its statement (all tests of its module when
   the line runs at import only, e.g. a module constant), fastest first, with ``pytest -x`` in a
   child forked from a process that has imported torch, FAISS and pytest already, and a timeout
   of 20 s + 3x their traced duration. A mutant whose statement no test runs survives untried.

Killed: a test failed or the mutated module did not import. Timeout: killed by the timeout
(counted as killed, listed apart). Survived: every test passed. Excluded: the site's line carries
``# pragma: no mutate: <reason>`` (a speed-only constant, an equivalent line): never run, not
scored, listed with its reason. `benchmarks.mutation_report.NOTES` gives the reason a survivor
cannot be killed (the same behaviour), keyed by a fragment of its code so that edits and splits
do not stale it; the report lists every survivor with it.
``--survivors`` reruns only the survivors of the last results (after new tests) and merges;
``--missing`` runs only the mutants the last results lack. A run of some modules keeps the last
verdicts of the others (the report names the run each module's verdicts come from).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.mutants import generate, pragmas
from benchmarks.mutation_report import equivalent, write_report

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "mutation"
TARGETS = ["sot_core/ot/costs.py", "sot_core/ot/sinkhorn.py", "sot_core/ot/push_pull.py", "sot_core/ot/dca.py",
           "sot_core/curate/select.py", "sot_core/curate/report.py", "sot_core/curate/budget.py",
           "sot_core/curate/neighbours.py"]
# The targets' unit-level tests: no Prefect server, no `sot` subprocess (a subprocess runs code
# the tracer cannot see, and each costs ~10 s of imports). The flow-level contract tests
# (test_output_contract, test_curate) are left out for the same reason; tests/test_publish.py
# checks `publish` directly.
TESTS = ["tests/test_costs.py", "tests/test_ot.py", "tests/test_sinkhorn_details.py", "tests/test_push_pull_reference.py", "tests/test_ivf.py",
         "tests/test_select.py", "tests/test_selection_reference.py", "tests/test_budget.py", "tests/test_neighbours.py",
         "tests/test_refusal_guard.py", "tests/test_guards.py", "tests/test_publish.py",
         "-m", "not slow and not integration",
         "--deselect", "tests/test_budget.py::test_keep_auto_through_sot_reports_contamination_and_threshold",
         "--deselect", "tests/test_budget.py::test_contamination_jump_raises_the_nightly_drift_alarm",
         "--deselect", "tests/test_guards.py::test_keep_001_on_a_small_pool_fails_with_one_line_and_publishes_nothing",
         "--deselect", "tests/test_ot.py::test_solver_imports_without_faiss"]
# Each module's own test files: its mutants run these first, then the other covering tests.
OWN = {"sot_core/ot/costs.py": ("tests/test_costs.py", "tests/test_ivf.py"),
       "sot_core/ot/sinkhorn.py": ("tests/test_sinkhorn_details.py", "tests/test_ot.py",
                                   "tests/test_push_pull_reference.py"),
       "sot_core/ot/push_pull.py": ("tests/test_push_pull_reference.py", "tests/test_ot.py"),
       "sot_core/ot/dca.py": ("tests/test_push_pull_reference.py", "tests/test_ot.py"),
       "sot_core/curate/report.py": ("tests/test_publish.py", "tests/test_select.py"),
       "sot_core/curate/select.py": ("tests/test_select.py", "tests/test_selection_reference.py",
                                     "tests/test_publish.py", "tests/test_refusal_guard.py", "tests/test_budget.py"),
       "sot_core/curate/budget.py": ("tests/test_budget.py", "tests/test_neighbours.py"),
       "sot_core/curate/neighbours.py": ("tests/test_neighbours.py", "tests/test_budget.py")}
# Seconds of (traced) test time a mutant may run before its remaining covering tests are dropped;
# a survivor of a capped run is rerun against all of them (`--survivors --full`).
CAP_S = 4.0
EXCLUDE = {".venv", ".git", ".sot", "out", "results", "__pycache__", ".pytest_cache", ".hypothesis"}
def copy_repo(dest: Path) -> None:
    """The working tree without environments, stores, results and caches."""
    def ignore(folder, names):
        return [n for n in names if n in EXCLUDE]
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)


def run_worker(work: Path, args: list[str], log: Path) -> None:
    # the copy's tests look for the shared datasets next to the checkout they run in: point them here
    env = {**os.environ, "SOT_SHARED_DATA": os.environ.get("SOT_SHARED_DATA", str(REPO.parent / "shared" / "data"))}
    with log.open("a") as sink:
        done = subprocess.run([sys.executable, "-m", "benchmarks.mutation_worker", *args], cwd=work,
                              stdout=sink, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"mutation worker {args[0]} failed (rc {done.returncode}); see {log}")


def choose(tests: set[str], module: str, durations: dict, cap: float | None) -> list[str]:
    """The module's own tests first, each group fastest first; at most `cap` seconds of them (at
    least one test) unless cap is None."""
    own = OWN.get(module, ())
    ordered = sorted(tests, key=lambda t: (t.split("::")[0] not in own, durations.get(t, 0.0), t))
    chosen, spent = [], 0.0
    for test in ordered:
        if cap is not None and chosen and spent + durations.get(test, 0.0) > cap:
            break
        chosen.append(test)
        spent += durations.get(test, 0.0)
    return chosen


def plan(work: Path, coverage: dict, modules: list[str], only: set[str] | None,
         cap: float | None = CAP_S) -> tuple[list[dict], dict]:
    """Jobs for the worker and the metadata of every mutant (its tests or why it has none)."""
    durations, lines = coverage["durations"], coverage["lines"]
    jobs, meta = [], {}
    for module in modules:
        path = work / module
        covered = lines.get(module, {})
        module_tests = {t for ctx in covered.values() for t in ctx if t != "<import>"}
        source = (REPO / module).read_text()  # the copy's file may hold a mutant while a worker runs
        code, excluded, keys = source.splitlines(), [], set()
        for mutant in generate(source, excluded):
            key = f"{module}:{mutant.key}"
            while key in keys:  # nested operators starting at one column: x - y - z
                key += "+"
            keys.add(key)
            if only is not None and key not in only:
                continue
            span = range(min(mutant.stmt_line, mutant.line), mutant.end_line + 1)
            contexts = {c for line in span for c in covered.get(str(line), [])}
            tests = contexts - {"<import>"} or (module_tests if "<import>" in contexts else set())
            covering, tests = len(tests), choose(tests, module, durations, cap)
            meta[key] = {"file": module, "line": mutant.line, "col": mutant.col, "operator": mutant.operator,
                         "change": mutant.change, "code": code[mutant.line - 1].strip()[:120], "tests": len(tests),
                         "covering_tests": covering,
                         "import_only": not (contexts - {"<import>"}) and bool(tests)}
            if tests:
                budget = sum(durations.get(t, 0.0) for t in tests)
                jobs.append({"id": key, "file": str(path), "source": mutant.source, "tests": tests,
                             "timeout": round(15 + 2 * budget, 1)})
        meta.update(_excluded_meta(module, code, pragmas(source), excluded, meta))
    return jobs, meta


def _excluded_meta(module: str, code: list[str], reasons: dict, excluded: list, taken: dict) -> dict:
    """The metadata of the mutants a ``# pragma: no mutate`` line left out (never run, not scored)."""
    meta = {}
    for mutant in excluded:
        key = f"{module}:{mutant.key}"
        while key in taken or key in meta:
            key += "+"
        meta[key] = {"file": module, "line": mutant.line, "col": mutant.col, "operator": mutant.operator,
                     "change": mutant.change, "code": code[mutant.line - 1].strip()[:120], "tests": 0,
                     "covering_tests": 0, "import_only": False,
                     "excluded": reasons[mutant.line] or "(no reason given)"}
    return meta


def _missing(modules: list[str], earlier: dict | None) -> set[str]:
    """Ids of the mutants of `modules` that the earlier results lack."""
    have = {m["id"] for m in (earlier or {"mutants": []})["mutants"]}
    ids = set()
    for module in modules:
        for mutant in generate((REPO / module).read_text()):
            key = f"{module}:{mutant.key}"
            while key in ids:  # as `plan` numbers nested operators that start at one column
                key += "+"
            ids.add(key)
    return ids - have


def plan_given(work: Path, modules: list[str], only: set[str], tests: list[str]) -> tuple[list[dict], dict]:
    """Jobs that run `tests` against the mutants in `only` (earlier survivors) of `modules`."""
    jobs, meta = [], {}
    for module in modules:
        path = work / module
        keys = set()
        for mutant in generate((REPO / module).read_text()):
            key = f"{module}:{mutant.key}"
            while key in keys:  # numbered over all mutants, as `plan` does
                key += "+"
            keys.add(key)
            if key in only:
                meta[key] = {}
                jobs.append({"id": key, "file": str(path), "source": mutant.source, "tests": tests, "timeout": 240})
    return jobs, meta


def classify(result: dict | None) -> str:
    """killed / timeout / survived / error from the worker's result (None: no test runs it)."""
    if result is None:
        return "survived"
    if result["timed_out"]:
        return "timeout"
    # pytest: 0 all passed, 1 a test failed, 2 interrupted (a collection error: the module broke);
    # 4 with "found no collectors": the test module did not import (the mutant broke the import)
    if result["rc"] == 4 and "found no collectors" in result.get("tail", ""):
        return "killed"
    return {0: "survived", 1: "killed", 2: "killed"}.get(result["rc"], "error")


def collect(work: Path, jobs: list[dict], meta: dict, previous: dict | None, tests: list[str] | None) -> list[dict]:
    """Every planned mutant with its verdict; a rerun's verdicts replace the earlier survivors'."""
    results, planned = {}, {job["id"] for job in jobs}
    for line in (work / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        results[row["id"]] = row
    mutants = []
    for key, info in meta.items():
        result = results.get(key)
        status = ("excluded" if "excluded" in info else
                  "not run" if result is None and key in planned else classify(result))
        mutants.append({"id": key, **info, "status": status, "killed_by": (result or {}).get("killed_by"),
                        "seconds": (result or {}).get("seconds"),
                        "note": "no test runs this statement" if result is None and key not in planned else ""})
    if previous:  # merge: the rerun's verdicts replace the old survivors', which stay marked as such
        merged = {m["id"]: m for m in previous["mutants"]}
        for m in mutants:
            if m["id"] in merged and m["status"] != "excluded":
                merged[m["id"]] = {**merged[m["id"]], **{k: m[k] for k in ("status", "killed_by", "seconds")},
                                   "first_run": "survived", "rerun_tests": tests or m["tests"]}
        mutants = list(merged.values())
    return mutants


def carry_over(mutants: list[dict], previous: dict | None, replaced: set[str]) -> list[dict]:
    """`mutants` plus the earlier results' mutants that this run did not redo (those of modules
    not in `replaced`, and any not run now), each marked with the run it comes from. A site that
    now carries ``# pragma: no mutate`` is excluded."""
    if previous is None:
        return mutants
    done, kept, reasons = {m["id"] for m in mutants}, [], {}
    for m in previous["mutants"]:
        if m["id"] in done or m["file"] in replaced:
            continue
        m = {"run": previous.get("finished"), **m}
        if m["file"] not in reasons:
            reasons[m["file"]] = pragmas((REPO / m["file"]).read_text())
        reason = reasons[m["file"]].get(m["line"])
        if reason is not None:
            m.update(status="excluded", excluded=reason or "(no reason given)")
        kept.append(m)
    return mutants + kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", nargs="*", default=TARGETS, help="target modules (default: all)")
    parser.add_argument("--survivors", action="store_true", help="rerun the survivors of the last results only")
    parser.add_argument("--full", action="store_true", help="run every covering test (no time cap)")
    parser.add_argument("--tests", nargs="*", help="with --survivors: run these tests against every survivor of "
                        "--module (no coverage run), e.g. the tests written to kill them")
    parser.add_argument("--workdir", help="reuse this work folder (resumes an interrupted run)")
    parser.add_argument("--no-run", action="store_true", help="only report what the work folder's results hold "
                        "(mutants not run yet are listed as 'not run')")
    parser.add_argument("--missing", action="store_true", help="run only the mutants of --module that the last "
                        "results lack (e.g. after a generator change) and merge them in")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    out = Path(args.out)
    earlier = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    previous = earlier if args.survivors else None
    # survivors explained as equivalent are not rerun
    only = ({m["id"] for m in previous["mutants"] if m["status"] == "survived" and not equivalent(m)}
            if previous else None)
    if args.missing:
        only = _missing(args.module, earlier)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sot-mutation-"))
    repo, log = work / "repo", work / "worker.log"
    if not repo.exists():
        copy_repo(repo)
    for module in TARGETS if not args.no_run else ():  # an interrupted run must not leave a mutant in the copy
        shutil.copyfile(REPO / module, repo / module)
    started = time.perf_counter()
    if args.tests:
        jobs, meta = plan_given(repo, args.module, only or set(), args.tests)
    else:
        if not (work / "coverage.json").exists():
            run_worker(repo, ["coverage", "--out", str(work / "coverage.json"),
                              *[f"--target={m}" for m in TARGETS], "--", *TESTS], log)
        coverage = json.loads((work / "coverage.json").read_text())
        failed = [t for t, o in coverage["outcomes"].items() if o == "failed"]
        if failed:
            raise RuntimeError(f"the test selection fails on the unmutated code: {failed[:5]}")
        jobs, meta = plan(repo, coverage, args.module, only, None if args.full else CAP_S)
    (work / "jobs.json").write_text(json.dumps(jobs))
    print(f"mutation: {len(meta)} mutants, {len(jobs)} with tests; coverage took "
          f"{time.perf_counter() - started:.0f} s; work folder {work}", flush=True)
    if not args.no_run:
        run_worker(repo, ["mutants", "--jobs", str(work / "jobs.json"), "--out", str(work / "results.jsonl")], log)
    mutants = collect(work, jobs, meta, previous, args.tests)
    if not args.survivors:  # the other modules' (or, with --missing, the other mutants') last verdicts stay
        mutants = carry_over(mutants, earlier, set() if args.missing else set(args.module))
    elapsed = time.perf_counter() - started
    summary = write_report(out, mutants, TESTS, previous["seconds"] if previous else elapsed, rerun=bool(previous),
                           rerun_seconds=elapsed if previous else None)
    print(f"mutation: {summary['killed_or_timeout']}/{summary['scored']} killed -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
