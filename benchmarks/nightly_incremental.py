"""Benchmark: a nightly re-curation after 1% new rows against the full curation run.

Pool: GSM8K train (+ Alpaca demo when more rows are asked for) from ../shared/data; safe anchor
and harmful reference: the bundled demo files. Both runs go through their Prefect flows in one
process (ephemeral API, warmed up first), into one fresh store:

1. full:    `curate-dataset` on N rows (everything ingested and embedded).
2. nightly: `nightly-recuration` with the same N rows as its base pool and round(N/100) new rows
            in the incoming folder (only those are embedded; costs and weights are recomputed over
            the N + N/100 accumulated rows).

The encoder model is loaded once before either run is timed: model load is EXCLUDED from both.

    python -m benchmarks.nightly_incremental [--rows 5000] [--new-fraction 0.01] [--out FILE]

The default output is results/nightly_incremental/rows<N>.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import DEMO, SHARED, result_path


def task_rows(n: int) -> list[dict]:
    """The first n rows of GSM8K train, then the Alpaca demo (benign task data)."""
    rows = [{"prompt": r["question"], "response": r["answer"]}
            for r in map(json.loads, (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines())]
    alpaca = json.loads((SHARED / "alpaca_en_demo" / "alpaca_en_demo.json").read_text())
    rows += [{"prompt": (a["instruction"] + "\n" + a["input"]).strip(), "response": a["output"]} for a in alpaca]
    if n > len(rows):
        raise SystemExit(f"only {len(rows)} rows available, asked for {n}")
    return rows[:n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000, help="pool size of the full run (default 5000)")
    parser.add_argument("--new-fraction", type=float, default=0.01, help="new rows per night (default 0.01)")
    parser.add_argument("--out", default=None, help="Markdown report (default: results/nightly_incremental/rows<N>.md)")
    args = parser.parse_args()
    if not SHARED.exists():
        print(f"skip: shared data not found at {SHARED}")
        return 0
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    from prefect import flow

    from sot_prefect.flows.curate import curate_dataset
    from sot_prefect.flows.nightly import nightly_recuration
    from sot_core.curate.pipeline import cached_encoder

    n_new = max(1, round(args.rows * args.new_fraction))
    rows = task_rows(args.rows + n_new)
    work = Path(tempfile.mkdtemp(prefix="sot-nightly-bench-"))
    pool = write_jsonl(work / "pool.jsonl", rows[: args.rows])
    home, incoming = work / "home", work / "incoming"
    common = dict(safe_anchor=str(DEMO / "safe_anchor.jsonl"), harmful_ref=str(DEMO / "harmful_ref.jsonl"),
                  home=str(home))

    @flow
    def warm_up() -> None:  # starts the ephemeral API outside the timings
        return None

    warm_up()
    t0 = time.perf_counter()
    cached_encoder("minilm")._load()  # model load excluded from both timings
    model_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    full = curate_dataset(pool=str(pool), out_dir=str(work / "out" / "full"), name="bench", **common)
    full_s = time.perf_counter() - t0

    write_jsonl(incoming / "night1.jsonl", rows[args.rows:])
    t0 = time.perf_counter()
    night = nightly_recuration(incoming=str(incoming), base_pool=str(pool), out_dir=str(work / "out" / "nightly"),
                               name="bench-nightly", **common)
    night_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    quiet = nightly_recuration(incoming=str(incoming), base_pool=str(pool), out_dir=str(work / "out" / "nightly"),
                               name="bench-nightly", **common)
    quiet_s = time.perf_counter() - t0
    assert quiet["status"] == "no-op", quiet  # the timing below is only meaningful for a no-op

    ratio = night_s / full_s
    load = os.getloadavg()
    lines = [
        "# Nightly incremental re-curation vs full run",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python -m benchmarks.nightly_incremental --rows {args.rows}`.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}; load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} "
        "(the machine is shared: other jobs ran meanwhile).",
        "",
        f"Pool: first {args.rows} rows of GSM8K train (+ Alpaca demo beyond 7,473); anchor and harmful reference: "
        f"bundled demo (50 / 272 rows). Night: {n_new} new rows ({args.new_fraction:.0%}). Encoder all-MiniLM-L6-v2; "
        f"its model load ({model_load:.1f} s) is **excluded** from both timings. Both timings are whole flow "
        "runs (Prefect task overhead included).",
        "",
        "| run | wall s | rows embedded (pool/anchor/harmful) | ingest | embed | costs | solve | select |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, seconds, result in (("full curate-dataset", full_s, full), ("nightly, +1% rows", night_s, night)):
        st, emb = result["stage_seconds"], result["counts"]["embedded_now"]
        lines.append(f"| {label} | {seconds:.1f} | {emb.get('pool')}/{emb.get('safe_anchor')}/{emb.get('harmful_ref')} | "
                     + " | ".join(f"{st.get(k, 0.0):.2f}" for k in ("ingest", "embed", "costs", "solve", "select")) + " |")
    lines += [
        f"| nightly, nothing new (no-op) | {quiet_s:.1f} | - | | | | | |",
        "",
        f"**Nightly / full = {ratio:.1%}** (target: at most 10%). "
        + ("Target met." if ratio <= 0.10 else "Target NOT met at this size."),
        "",
        "Outside the stage timings (Prefect task overhead, drift, plots, artifacts): full "
        f"{full_s - sum(full['stage_seconds'].values()):.1f} s, nightly {night_s - sum(night['stage_seconds'].values()):.1f} s. "
        "This fixed nightly cost does not shrink with the pool, so the ratio holds only while the full run's "
        "embedding time is large against it (a big pool or a slow encoder).",
        "",
        "Costs and weights are recomputed over the whole accumulated pool each night (no warm start: "
        "`solve_push_pull` takes no initial weights or potentials); embedding touches only the new rows.",
        "",
    ]
    out = Path(args.out or result_path("nightly_incremental", f"rows{args.rows}.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
