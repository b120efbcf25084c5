"""Scaling benchmark: our push-pull OT solver vs a POT-based push-pull loop.

Problem: pool of N unit vectors (d = 384, 90% drawn around 10 "safe" cluster centres, 10% around
10 "harmful" centres), a 50-row safe anchor, a 5,000-row harmful reference, cosine costs.

* ours: `solve_push_pull` with the default config (float32, eps = 0.1, tau = 2 eps, Sinkhorn
  marginal tol 1e-4). Pools above ``--knn-above`` rows use the kNN-sparse harmful cost (k nearest
  harmful rows per pool row, FAISS); the anchor cost stays dense (N x 50).
* POT: the same number of outer steps; each step runs ``ot.sinkhorn(..., method="sinkhorn_log")``
  (float64 NumPy, cold start, stopThr = the same 1e-4, which POT applies to the L2 norm of the
  marginal error, i.e. no stricter than our L1 tol) on both problems, then the fixed-point step
  w = softmax(-(f_anchor - lam f_harmful) / tau) with f read off POT's log-scalings in the
  KL(P | w x b) convention. Skipped above ``--pot-max`` rows (dense float64 costs) or cut at
  ``--pot-timeout`` seconds (reported as such, never extrapolated).

Each measurement runs in a fresh subprocess; peak memory is that process's RSS high-water mark
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``): interpreter + libraries + data + costs + solve.
Times: ``*_cost_s`` builds the costs, ``*_s`` is the solve alone. ``*_tol`` is the largest L1
marginal error reached over the two problems at the last outer step.

``--knn-error K [K ...]`` measures instead, at each size and each rule for the missing entries
(``--knn-fill``, default mean kth inf), how far the kNN-sparse harmful cost moves the OT value
(one Sinkhorn solve) and the push-pull solve from the dense one: the L1 distance of the two
weight vectors, the fraction of rows on which the keep-80% selections agree, and the Spearman
correlation of the two scores.

    python -m benchmarks.ot_scaling --sizes 5000 50000 --json benchmarks/results/ot_scaling/cpu_2cores.json \
        --md benchmarks/results/ot_scaling/cpu_2cores.md
    python -m benchmarks.ot_scaling --sizes 2000 5000 --knn-error 16 64 256 \
        --json benchmarks/results/ot_scaling/knn_error.json --md benchmarks/results/ot_scaling/knn_error.md

This script imports only `sot_core` and third-party libraries, so `python benchmarks/ot_scaling.py`
works as well.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

D, N_ANCHOR, N_HARMFUL, SEED = 384, 50, 5000, 0


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def make_data(n: int):
    """Clustered unit vectors; generated in chunks so 1M x 384 never needs a float64 copy."""
    rng = np.random.default_rng(SEED)
    safe_c, harm_c = _unit(rng.normal(size=(10, D))), _unit(rng.normal(size=(10, D)))

    def sample(centres, count):
        out = np.empty((count, D), dtype=np.float32)
        for start in range(0, count, 100_000):
            stop = min(start + 100_000, count)
            noise = rng.standard_normal(size=(stop - start, D), dtype=np.float32) / np.sqrt(D)
            out[start:stop] = _unit(centres[rng.integers(0, len(centres), stop - start)] + noise)
        return out

    n_safe = int(0.9 * n)
    pool = np.vstack([sample(safe_c, n_safe), sample(harm_c, n - n_safe)])
    return pool, sample(safe_c, N_ANCHOR), sample(harm_c, N_HARMFUL)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker_ours(n: int, k: int | None) -> dict:
    from sot_core.ot.costs import cosine_costs
    from sot_core.ot.push_pull import PushPullConfig, solve_push_pull

    pool, anchor, harmful = make_data(n)
    t0 = time.perf_counter()
    cost_anchor = cosine_costs(pool, anchor)
    cost_harmful = cosine_costs(pool, harmful, k=k)
    cost_s = time.perf_counter() - t0
    del pool
    # warm-up on a toy problem so one-off torch/OpenMP initialisation is not timed
    solve_push_pull(np.asarray(cost_anchor)[:64] if k is None else cost_anchor[:64],
                    np.full((64, 8), 0.5, dtype=np.float32), PushPullConfig(max_outer=2))
    t0 = time.perf_counter()
    result = solve_push_pull(cost_anchor, cost_harmful, PushPullConfig())
    solve_s = time.perf_counter() - t0
    diag = result.diagnostics
    is_harmful = np.arange(n) >= int(0.9 * n)
    return {"ours_s": solve_s, "ours_cost_s": cost_s, "ours_peak_mb": _peak_mb(),
            "ours_tol": max(diag["marginal_error_anchor"], diag["marginal_error_harmful"]),
            "outer_iterations": diag["outer_iterations"],
            "sinkhorn_iterations": diag["sinkhorn_iterations"], "converged": diag["converged"],
            "harmful_cost": "dense" if k is None else f"knn k={k}",
            "ess_fraction": float(1.0 / (result.weights ** 2).sum() / n),
            "harmful_weight_mass": float(result.weights[is_harmful].sum())}


def worker_pot(n: int, outer: int, timeout_s: float, tol=1e-4) -> dict:
    import ot

    from sot_core.ot.push_pull import PushPullConfig

    defaults = PushPullConfig()  # the same eps, lam and tau as our solver's run
    eps, lam, tau = defaults.eps, defaults.lam, defaults.effective_tau()
    from scipy.special import log_softmax

    pool, anchor, harmful = make_data(n)
    t0 = time.perf_counter()
    pool64 = pool.astype(np.float64)
    costs = {"anchor": 1.0 - pool64 @ anchor.astype(np.float64).T,
             "harmful": 1.0 - pool64 @ harmful.astype(np.float64).T}
    cost_s = time.perf_counter() - t0
    del pool, pool64
    log_w = np.full(n, -np.log(n))
    started, errors, done = time.perf_counter(), {}, 0
    for _ in range(outer):
        grad = np.zeros(n)
        for name, sign in (("anchor", 1.0), ("harmful", -lam)):
            C = costs[name]
            b = np.full(C.shape[1], 1.0 / C.shape[1])
            plan, log = ot.sinkhorn(np.exp(log_w), b, C, eps, method="sinkhorn_log",
                                    stopThr=tol, numItermax=100_000, log=True)
            # POT's plan is diag(u) K diag(v): the KL-convention potential is eps*(log u - log w)
            grad += sign * eps * (log["log_u"] - log_w)
            errors[name] = float(np.abs(plan.sum(0) - b).sum() + np.abs(plan.sum(1) - np.exp(log_w)).sum())
            del plan
        log_w = log_softmax(-grad / tau)
        done += 1
        if time.perf_counter() - started > timeout_s:
            break
    solve_s = time.perf_counter() - started
    out = {"pot_cost_s": cost_s, "pot_peak_mb": _peak_mb(), "pot_tol": max(errors.values()),
           "pot_outer_done": done}
    if done < outer:
        out.update(pot_s=None, pot_status=f"timeout: {done}/{outer} outer steps in {solve_s:.0f} s")
    else:
        out.update(pot_s=solve_s, pot_status="ok")
    return out


def knn_error(n: int, ks: list[int], fills: list[str]) -> list[dict]:
    """Distance of the kNN-sparse solves from the dense ones at each k and fill rule, on `make_data(n)`.

    Two measures per (k, fill): the OT value OT_eps(uniform pool, harmful) of one Sinkhorn solve
    (float64, tol 1e-6; relative error against the dense value), and the default push-pull solve
    (L1 distance of the weights, agreement of the keep-80% selections, Spearman of the scores,
    weight mass on the harmful 10%).
    """
    from sot_core.curate.select import select_top
    from sot_core.ot.costs import cosine_costs
    from sot_core.ot.push_pull import PushPullConfig, solve_push_pull
    from sot_core.ot.sinkhorn import sinkhorn_log

    def ranks(x: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(x))

    config = PushPullConfig()
    pool, anchor, harmful = make_data(n)
    is_harmful = np.arange(n) >= int(0.9 * n)
    a, b = np.full(n, 1.0 / n), np.full(len(harmful), 1.0 / len(harmful))

    def value(cost) -> float:
        return sinkhorn_log(a, b, cost, config.eps, tol=1e-6, max_iter=20_000, dtype="float64").value

    cost_anchor, dense_cost = cosine_costs(pool, anchor), cosine_costs(pool, harmful)
    dense_value = value(dense_cost)
    dense = solve_push_pull(cost_anchor, dense_cost, config)
    del dense_cost
    rows = []
    for k in ks:
        knn = cosine_costs(pool, harmful, k=k)
        for fill in fills:
            knn.missing = fill
            r = {"n": n, "m": len(harmful), "k": k, "fill": fill, "eps": config.eps,
                 "ot_value_rel_error": abs(value(knn) - dense_value) / abs(dense_value),
                 "dense_harmful_mass": float(dense.weights[is_harmful].sum())}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # recorded in "converged" / "stop_reason"
                    sparse = solve_push_pull(cost_anchor, knn, config)
            except (FloatingPointError, RuntimeError) as err:  # "inf" can make the problem infeasible
                r["solve_error"] = f"{type(err).__name__}: {err}"
            else:
                r.update({"weights_l1": float(np.abs(sparse.weights - dense.weights).sum()),
                          "keep80_agreement": float((select_top(sparse.weights, 0.8) == select_top(dense.weights, 0.8)).mean()),
                          "score_spearman": float(np.corrcoef(ranks(sparse.score), ranks(dense.score))[0, 1]),
                          "harmful_mass": float(sparse.weights[is_harmful].sum()),
                          "converged": sparse.diagnostics["converged"], "stop_reason": sparse.diagnostics["stop_reason"]})
            rows.append(r)
            print(f"n={n} k={k} fill={fill}: " + ", ".join(f"{key} {val}" for key, val in r.items()
                                                           if key not in ("n", "k", "fill")), flush=True)
    return rows


def knn_error_table(rows: list[dict]) -> str:
    lines = ["| n x m | k | fill | OT value error | weights L1 | keep-80% agreement | Spearman (score) | harmful mass (dense) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['n']:,} x {r['m']:,} | {r['k']} | {r['fill']} | {r['ot_value_rel_error']:.2%} | "
        if "solve_error" in r:
            lines.append(head + f"solve failed: {r['solve_error'].split(';')[0]} | | | |")
            continue
        note = "" if r["converged"] else f" (not converged: {r['stop_reason'].split(':')[0]})"
        lines.append(head + f"{r['weights_l1']:.4f}{note} | {r['keep80_agreement']:.2%} | {r['score_spearman']:.4f} | "
                     f"{r['harmful_mass']:.4f} ({r['dense_harmful_mass']:.4f}) |")
    return "\n".join(lines)


def run_worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    ram = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {"nproc": os.cpu_count(), "ram_gb": round(ram / 1024 ** 2, 1), "cpu": cpu,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000, 500000, 1000000])
    parser.add_argument("--k", type=int, default=32, help="harmful neighbours per pool row (kNN path)")
    parser.add_argument("--knn-above", type=int, default=100_000,
                        help="pools larger than this use the kNN-sparse harmful cost")
    parser.add_argument("--pot-max", type=int, default=100_000,
                        help="skip POT above this pool size (dense float64 N x 5050 costs + plan)")
    parser.add_argument("--pot-timeout", type=float, default=900.0)
    parser.add_argument("--knn-error", type=int, nargs="+", metavar="K",
                        help="measure the kNN-sparse solve's distance from the dense one at these k instead")
    parser.add_argument("--knn-fill", nargs="+", default=["mean", "kth", "inf"], choices=["mean", "kth", "inf"],
                        help="--knn-error: the rules for the missing entries to compare (KnnCost.missing)")
    parser.add_argument("--json")
    parser.add_argument("--md")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.knn_error:
        rows = [r for n in args.sizes for r in knn_error(n, args.knn_error, args.knn_fill)]
        report = {"machine": machine(), "knn_error": rows}
        table = knn_error_table(rows)
        print(table)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=2)
        if args.md:
            with open(args.md, "w") as fh:
                fh.write("# kNN-sparse cost error (measured)\n\nProduced by `python -m benchmarks.ot_scaling "
                         "--knn-error`; see `knn_error` in that file. Errors are against the dense cost "
                         "(default solver settings, eps 0.1).\n\n" + table + "\n")
        return

    if args.worker:
        kind, n = args.worker[0], int(args.worker[1])
        if kind == "ours":
            k = None if args.worker[2] == "dense" else int(args.worker[2])
            print(json.dumps(worker_ours(n, k)))
        else:
            print(json.dumps(worker_pot(n, int(args.worker[2]), float(args.worker[3]))))
        return

    report = {"machine": machine(), "sizes": {}}
    for n in args.sizes:
        k = args.k if n > args.knn_above else None
        row = {"n": n, "anchor": N_ANCHOR, "harmful": N_HARMFUL, "d": D}
        row.update(run_worker(["ours", str(n), "dense" if k is None else str(k)]))
        if "error" in row:
            row.update(pot_s=None, pot_status="skipped: our run failed")
        elif n > args.pot_max:
            gb = n * (N_ANCHOR + N_HARMFUL) * 8 * 2 / 1e9
            row.update(pot_s=None, pot_peak_mb=None, pot_tol=None,
                       pot_status=f"skipped: dense float64 cost + plan need ~{gb:.0f} GB")
        else:
            row.update(run_worker(["pot", str(n), str(row["outer_iterations"]), str(args.pot_timeout)]))
        if row.get("pot_s") and row.get("ours_s"):
            row["speedup"] = row["pot_s"] / row["ours_s"]
        report["sizes"][str(n)] = row
        print(json.dumps(row), flush=True)

    m = report["machine"]
    lines = [f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gb']} GB RAM, torch {m['torch']} "
             f"({m['torch_threads']} threads), Python {m['python']}; load average at start "
             f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])} (shared machine).", "",
             "| N | harmful cost | outer / Sinkhorn it. | ours solve s | ours cost s | ours peak MB "
             "| ours tol | POT s | POT peak MB | POT tol | speedup | POT status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in report["sizes"].items():
        lines.append(
            f"| {n} | {r.get('harmful_cost', '-')} | {r.get('outer_iterations', '-')} / "
            f"{r.get('sinkhorn_iterations', '-')} | {fmt(r.get('ours_s'), '.2f')} | "
            f"{fmt(r.get('ours_cost_s'), '.2f')} | {fmt(r.get('ours_peak_mb'), '.0f')} | "
            f"{fmt(r.get('ours_tol'), '.1e')} | {fmt(r.get('pot_s'), '.1f')} | "
            f"{fmt(r.get('pot_peak_mb'), '.0f')} | {fmt(r.get('pot_tol'), '.1e')} | "
            f"{fmt(r.get('speedup'), '.1f')} | {r.get('pot_status', r.get('error', ''))} |")
    table = "\n".join(lines)
    print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write("# OT scaling benchmark (measured)\n\n"
                     "Produced by `python -m benchmarks.ot_scaling`; see its docstring for the setup. "
                     "Peak MB = RSS high-water of a fresh process (imports + data + costs + "
                     "solve). Solve times exclude cost building.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
