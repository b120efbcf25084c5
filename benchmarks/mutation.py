"""Mutation check of the numerical core and selection: does a targeted test selection fail on
deliberately broken copies of the code?

    python -m benchmarks.mutation [--only NAME ...] [--out benchmarks/results/mutation]

Each mutant in `MUTANTS` is one textual change to `sot_core/ot/push_pull.py`, `sinkhorn.py`,
`costs.py` or `sot_core/curate/select.py`: the breakages a reviewer would try (a wrong constant in
the objective, a damping ignored, a clip removed, a sign flipped, ties broken the other way). For
each, the repository is copied to a temporary folder (without .venv, .git, stores and results),
the change applied, and `TESTS` run there with this interpreter (`pytest -x`, so a kill stops
at its first failing test). A mutant is killed when pytest fails. Results: score, and per mutant
the first failing test or "survived", in `<out>/results.json` and `<out>/README.md`.

This is a hand-picked set (one per breakage the issue names, plus classic operator mutations),
not an exhaustive mutmut/cosmic-ray run: those generate hundreds of mutants for these modules,
hours on a 2-core machine at ~10 s of targeted tests each.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_push_pull_reference.py", "tests/test_select.py", "tests/test_selection_reference.py",
         "tests/test_costs.py",
         "tests/test_ot.py::test_push_pull_downweights_harmful_without_collapse"]
EXCLUDE = {".venv", ".git", ".sot", "out", "results", "__pycache__", ".pytest_cache", ".hypothesis"}

PP, SK, CO, SE = ("sot_core/ot/push_pull.py", "sot_core/ot/sinkhorn.py", "sot_core/ot/costs.py",
                  "sot_core/curate/select.py")
# (name, file, old text (must occur once), new text, what it breaks)
MUTANTS = [
    ("lam_0.8", PP, 'fresh = cfg.lam * self._solve("harmful"', 'fresh = 0.8 * cfg.lam * self._solve("harmful"',
     "the push strength in the linearisation"),
    ("step_size_ignored", PP, "self.push_lin = (1 - cfg.step_size) * self.push_lin + cfg.step_size * fresh",
     "self.push_lin = fresh", "damping of the linearised push"),
    ("kl_dropped_from_trace", PP, 'self.config.lam * self.values["harmful"] + self.tau * kl',
     'self.config.lam * self.values["harmful"]', "the objective trace's prior term"),
    ("rho_equals_tau", PP, "rho = self.tau - cfg.eps", "rho = self.tau", "the anchor step's semi-relaxed strength"),
    ("tau_doubled_in_output", PP, "weights = torch.softmax(-score / dca.tau, dim=0)",
     "weights = torch.softmax(-score / (2 * dca.tau), dim=0)", "the weights' temperature"),
    ("next_gibbs_point", PP, "        if self.residual <= cfg.outer_tol:\n",
     "        self.push_lin = (1 - cfg.step_size) * self.push_lin + cfg.step_size * fresh\n"
     "        if self.residual <= cfg.outer_tol:\n", "returning the certified iterate"),
    ("stop_10x_early", PP, "if self.residual <= cfg.outer_tol:", "if self.residual <= 10 * cfg.outer_tol:",
     "the outer stopping rule"),
    ("value_sign", SK, "value = float((a.double() * f.double()).sum() + (b.double() * g.double()).sum())",
     "value = float((a.double() * f.double()).sum() - (b.double() * g.double()).sum())", "the OT value"),
    ("semi_relaxed_shrink", SK, "shrink = rho * eps / (rho + eps)", "shrink = rho * eps / (rho + 2 * eps)",
     "the semi-relaxed f-update"),
    ("eps_scaling_factor", SK, "_EPS_SCALING_FACTOR = 0.5", "_EPS_SCALING_FACTOR = 0.9",
     "epsilon scaling speed (results unchanged: expected to survive)"),
    ("cost_sign", CO, "np.subtract(1.0, ip, out=out[start:start + len(block)])",
     "np.add(1.0, ip, out=out[start:start + len(block)])", "cosine cost 1 - <x, y>"),
    ("norm_tolerance", CO, "_NORM_TOL = 1e-3", "_NORM_TOL = 1.5", "unit-norm check of embeddings"),
    ("clip_removed", SE, "return np.clip(np.exp(0.5 * (low + high)) * w, lo, hi)",
     "return np.exp(0.5 * (low + high)) * w", "the [0.2, 5] training-weight clip"),
    ("keep_floor", SE, "n_keep = int(round(keep * len(weights)))", "n_keep = int(keep * len(weights))",
     "rounding of the kept count"),
    ("ties_reversed", SE, 'order = np.argsort(-weights, kind="stable")', "order = np.argsort(weights)[::-1]",
     "tie-breaking of the top-K (earlier row wins)"),
]


def copy_repo(dest: Path) -> None:
    """The working tree without environments, stores, results and caches."""
    def keep(info: tarfile.TarInfo):
        return None if set(Path(info.name).parts) & EXCLUDE else info
    archive = dest.parent / "repo.tar"
    with tarfile.open(archive, "w") as tar:
        for item in REPO.iterdir():
            if item.name not in EXCLUDE:
                tar.add(item, arcname=item.name, filter=keep)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()


def run_mutant(name: str, file: str, old: str, new: str, work: Path) -> dict:
    src = work / "repo"
    target = src / file
    text = target.read_text()
    if text.count(old) != 1:
        return {"name": name, "status": "stale", "detail": f"{file}: the text to mutate occurs {text.count(old)} times"}
    target.write_text(text.replace(old, new))
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider", *TESTS],
                              cwd=src, capture_output=True, text=True, timeout=900)
    finally:
        target.write_text(text)
    failed = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("FAILED")]
    status = "killed" if done.returncode != 0 else "survived"
    return {"name": name, "status": status, "seconds": round(time.perf_counter() - started, 1),
            "killed_by": failed[0] if failed else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutant names to run (default: all)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mutation"))
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m[0] in args.only]
    with tempfile.TemporaryDirectory(prefix="sot-mutation-") as tmp:
        work = Path(tmp)
        copy_repo(work / "repo")
        results = []
        for name, file, old, new, what in chosen:
            result = {**run_mutant(name, file, old, new, work), "file": file, "breaks": what}
            print(f"{name}: {result['status']} {result.get('killed_by') or ''}", flush=True)
            results.append(result)
    scored = [r for r in results if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in scored)
    summary = {"tests": TESTS, "mutants": len(scored), "killed": killed,
               "score": killed / len(scored) if scored else None, "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Mutation check: {killed} of {len(scored)} mutants killed", "",
             f"Command: `python -m benchmarks.mutation`; tests: {', '.join(TESTS)}.", "",
             "| mutant | file | breaks | status | first failing test |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['file']} | {r['breaks']} | {r['status']} | {r.get('killed_by') or ''} |"
              for r in results]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"mutation: {killed}/{len(scored)} killed -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
