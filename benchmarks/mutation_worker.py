"""The two processes of `benchmarks.mutation`, run inside the copy of the repository.

``coverage``: run the test selection once, in process, with a line tracer on the target modules;
write which tests execute which lines (``"<import>"`` for lines run while modules are imported,
e.g. module constants and default arguments) and each test's duration.

``mutants``: import the heavy dependencies once (torch, numpy, FAISS, pytest, hypothesis: ~5 s a
process on a quiet 2-core machine, more than most mutants' tests), then for each mutant write
the mutated module, fork, run the mutant's tests with ``pytest -x`` in the child, kill the child
at the mutant's timeout, and restore the module. The parent never runs a torch or FAISS
operation, so no OpenMP thread pool exists at the fork (forking after one started can hang).
The parent imports no mutated module (nor anything that imports one): every child imports
the mutant afresh.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

# Imported once in the parent. The sot_core modules here import none of the mutated ones (checked
# before the first fork), so every child still imports the mutant afresh.
PREIMPORT = ["numpy", "torch", "faiss", "pyarrow", "pyarrow.parquet", "duckdb", "hypothesis",
             "hypothesis.strategies", "ot", "scipy.special", "_pytest.pytester", "sot_core.config",
             "sot_core.errors", "sot_core.io", "sot_core.refusals", "sot_core.data.store", "sot_core.data.loaders",
             "sot_core.failpoints", "sot_core.models.device"]


class _LineRecorder:
    """pytest plugin: per test node id, the (file, line) pairs of the target files it runs."""

    def __init__(self, targets: list[str]):
        self.targets = {str(Path(t).resolve()): t for t in targets}
        self.context = "<import>"
        self.lines: dict[str, set] = {}
        self.durations: dict[str, float] = {}
        self.outcomes: dict[str, str] = {}

    def _local(self, frame, event, arg):
        if event == "line":
            self.lines.setdefault(self.context, set()).add((self.targets[frame.f_code.co_filename], frame.f_lineno))
        return self._local

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename in self.targets:
            return self._local(frame, "line", arg)
        return None

    def start(self):
        sys.settrace(self._global)
        threading.settrace(self._global)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.context, started = item.nodeid, time.perf_counter()
        yield
        self.durations[item.nodeid] = time.perf_counter() - started
        self.context = "<import>"

    def pytest_runtest_logreport(self, report):
        if report.failed or report.when == "call":
            self.outcomes.setdefault(report.nodeid, report.outcome)
            if report.failed:
                self.outcomes[report.nodeid] = "failed"


def run_coverage(tests: list[str], targets: list[str], out: Path) -> int:
    recorder = _LineRecorder(targets)
    recorder.start()
    rc = pytest.main(["-q", "-p", "no:cacheprovider", *tests], plugins=[recorder])
    sys.settrace(None)
    by_line: dict[str, dict[str, list[str]]] = {}
    for context, lines in recorder.lines.items():
        for file, line in lines:
            by_line.setdefault(file, {}).setdefault(str(line), []).append(context)
    out.write_text(json.dumps({"rc": int(rc), "durations": recorder.durations, "outcomes": recorder.outcomes,
                               "lines": by_line}))
    return 0


def _child(args: list[str], log: Path) -> None:
    """In the forked child: the tests against the freshly imported (mutated) code; never returns."""
    try:
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.dont_write_bytecode = True  # a mutant's bytecode must never be cached for the next one
        from hypothesis import settings
        settings.register_profile("mutation", database=None)  # no replay of another mutant's failure
        settings.load_profile("mutation")
        rc = pytest.main(["-x", "-q", "-rf", "-p", "no:cacheprovider", *args])
        sys.stdout.flush()
        os._exit(int(rc))
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not run the parent's loop
        os._exit(99)


def run_one(file: Path, original: str, mutated: str | None, tests: list[str], timeout: float, log: Path) -> dict:
    """Apply one mutant (None: the unmutated code), run its tests in a forked child, restore."""
    cache = file.parent / "__pycache__"
    for stale in cache.glob(f"{file.stem}.*.pyc"):
        stale.unlink()
    if mutated is not None:
        file.write_text(mutated)
    started = time.perf_counter()
    try:
        pid = os.fork()
        if pid == 0:
            _child(tests, log)
        status, timed_out = None, False
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
            elif time.perf_counter() - started > timeout:
                os.killpg(pid, signal.SIGKILL)  # the child and anything it started
                os.waitpid(pid, 0)
                status, timed_out = -9, True
            else:
                time.sleep(0.05)
    finally:  # also when this process is stopped: the copy must never keep a mutant
        file.write_text(original)
    text = log.read_text(errors="replace") if log.exists() else ""
    failed = [line.split()[1] for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))
              and len(line.split()) > 1]
    return {"rc": status, "timed_out": timed_out, "seconds": round(time.perf_counter() - started, 2),
            "killed_by": failed[0] if failed else None, "tail": text[-600:] if status not in (0, 1) else ""}


def run_mutants(jobs_path: Path, out: Path) -> int:
    import importlib

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally` that restores the module
    for name in PREIMPORT:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    jobs = json.loads(jobs_path.read_text())
    mutated = {str(Path(job["file"]).resolve()) for job in jobs}
    loaded = [m for m, mod in list(sys.modules.items()) if str(getattr(mod, "__file__", "") or "") in mutated]
    if loaded:
        raise RuntimeError(f"the mutation worker imported a module it mutates before forking: {loaded}")
    log = out.parent / "child.log"
    done = {json.loads(line)["id"] for line in out.read_text().splitlines()} if out.exists() else set()
    with out.open("a") as sink:
        for job in jobs:
            if job["id"] in done:
                continue
            file = Path(job["file"])
            original = file.read_text()
            result = run_one(file, original, job.get("source"), job["tests"], job["timeout"], log)
            sink.write(json.dumps({"id": job["id"], **result}) + "\n")
            sink.flush()
            print(f"{job['id']}: rc={result['rc']} {result['seconds']} s {result['killed_by'] or ''}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    cov = sub.add_parser("coverage")
    cov.add_argument("--out", required=True)
    cov.add_argument("--target", action="append", required=True)
    cov.add_argument("tests", nargs="+")
    mut = sub.add_parser("mutants")
    mut.add_argument("--jobs", required=True)
    mut.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "coverage":
        return run_coverage(args.tests, args.target, Path(args.out))
    return run_mutants(Path(args.jobs), Path(args.out))


if __name__ == "__main__":
    raise SystemExit(main())
