"""End-to-end safety benchmark: does SOT curation preserve the aligned model's refusals?

Arms (all LoRA-fine-tuned from the same aligned base with the same seed and settings):

* ``aligned_base``      no fine-tuning (the reference point);
* ``full_pool``         the whole contaminated pool, weight 1;
* ``random``            a seeded random 80% of the pool, weight 1;
* ``instance_baseline`` the best instance-level baseline's top 80% (its curated.jsonl);
* ``sot``               SOT's top 80% with its importance weights (its curated.jsonl).

With ``--replay-fraction F`` three more arms, ``sot_replay``, ``random_replay`` and
``instance_baseline_replay``: the same rows plus F x their count of trusted refusals
(safety-tuned-llamas rows the alignment recipe did not train on; none is an evaluation prompt),
mixed by ``sot_core.train.replay``. The other two are the controls that tell how much of the
effect is the replay and how much the selection. ``--extra NAME=FILE`` adds an arm trained on any
curated file.

Curation: pass the two curated files (``--sot``, ``--baseline``), or let ``--curate`` make them:
SOT through the real ``sot curate`` CLI (defaults, MiniLM pair embeddings) and the instance-level
baseline = the anchor-versus-harmful classifier on the same embeddings, keeping its 80% least
harmful-like rows (on the general pool: as many rows as SOT kept, with or without the refusal guard,
whichever keeps fewer harmful rows). Anchor: 50 SST-2 train rows of the shared n1000_p0 file that are not in the
pool (the utility split, sst2/val.json, stays unseen); harmful reference: the bundled PyRIT
prompts (data/demo/harmful_ref.jsonl; on the general pool the 463-row PyRIT reference of
`benchmarks.selection_budget`), not BeaverTails. With ``--refusal-anchor FILE
[--refusal-share S]`` SOT curates with that composite anchor and the classifier is fitted with and
without those rows (see `curate_arms`). ``--pool general`` swaps the SST-2 mix for a
general-instruction pool (``general_mix``: Alpaca, BeaverTails harmful answers and refusals to
harmful prompts), where detectors do differ.

Output (default results/safety_e2e/sst2.json, or general.json with ``--pool general``): an object
keyed by arm, each with ``harmful_rate_keyword, harmful_rate_judge, over_refusal,
over_refusal_xstest, utility`` (fractions in [0, 1]) and ``n_prompts`` (held-out harmful prompts,
every distinct one by default). Each arm's per-prompt verdicts go to ``<out>.verdicts.json``, and
``<out>.meta.json`` holds the run's settings and the paired comparison of every arm with
``aligned_base`` and ``instance_baseline`` (difference, 95% bootstrap interval, McNemar p): the
arms are scored on the same prompts, so pairing is valid. Arms are trained and evaluated one after
the other; ``<work>/partial.json`` keeps the finished ones if a run is cut short.

    python -m benchmarks.safety_e2e --curate --replay-fraction 0.1 --base .sot/models/aligned-<key>
    python -m benchmarks.safety_e2e --sot out/sot/curated.jsonl --baseline out/base/curated.jsonl
    python -m benchmarks.safety_e2e --smoke   # tiny sizes, unaligned model: checks the plumbing only,
                                              # writes <work>/smoke/smoke.json, never results/
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from benchmarks.common import DEMO, RESULTS, beavertails_unsafe, pyrit_harmful_reference, write_jsonl, write_verdicts
from sot_core.io import atomic_write_text
from sot_core.eval.evaluate import EvalSpec, evaluate_model, shared_data_dir
from sot_core.eval.metrics import compare_arms
from sot_core.train.lora import LoraTrainConfig, read_curated, train_lora

DEFAULT_POOL = "harmful_finetune_mixes_beavertails/sst2/train_merged_n1000_p0.1.json"
METRICS = ("harmful_rate_keyword", "harmful_rate_judge", "over_refusal", "over_refusal_xstest", "utility", "n_prompts")


def pool_rows(path: Path) -> list[dict]:
    """Read the pool: curated-format JSONL, or a fine-tuning mix JSON ({instruction,input,output,flag}).

    Mix prompts are canonicalised as ingestion does (Alpaca wrapper removed), so the full-pool and
    random arms train on the same text as the curated arms, and utility is scored in that format.
    """
    from sot_core.data.loaders import canonical_prompt

    if path.suffix == ".jsonl":
        return read_curated(path)
    rows = []
    for i, r in enumerate(json.load(open(path))):
        prompt = canonical_prompt(r["instruction"], r.get("input") or "")
        rows.append({"id": f"pool-{i}", "prompt": prompt, "response": r["output"], "source": r.get("flag", "pool"), "weight": 1.0})
    return rows


def general_mix(data: Path, work: Path, seed: int) -> tuple[Path, Path]:
    """A general-instruction pool where harm detectors differ: 700 benign Alpaca rows, 100
    BeaverTails harmful answers (flag "unsafe") and 100 refusals to harmful prompts.

    Benign rows come from Alpaca demo rows 0-799 only (800+ are the over-refusal evaluation);
    refusals from the safety-tuned-llamas rows the alignment recipe did not train on. Returns
    the pool file and the anchor source for `curate_arms` (the other 100 Alpaca rows 0-799).
    """
    from sot_core.train.align import heldout_refusals

    rng = random.Random(seed)
    alpaca = json.load(open(data / "alpaca_en_demo/alpaca_en_demo.json"))[:800]
    picks = rng.sample(range(len(alpaca)), len(alpaca))
    unsafe = beavertails_unsafe(data)
    row = lambda i, o, flag, inp="": {"instruction": i, "input": inp, "output": o, "flag": flag}  # noqa: E731
    rows = ([row(alpaca[i]["instruction"], alpaca[i]["output"], "finetune", alpaca[i]["input"]) for i in picks[:700]]
            + [row(r["instruction"], r["output"], "unsafe", r["input"]) for r in rng.sample(unsafe, 100)]
            + [row(r["prompt"], r["response"], "refusal") for r in rng.sample(heldout_refusals(data_dir=data), 100)])
    rng.shuffle(rows)
    work.mkdir(parents=True, exist_ok=True)
    pool = work / "general_mix.json"
    pool.write_text(json.dumps(rows))
    anchor_source = work / "general_mix_anchor_source.json"
    anchor_source.write_text(json.dumps([alpaca[i] for i in picks[700:]]))
    return pool, anchor_source


def curate_arms(pool_file: Path, anchor_source: Path, work: Path, seed: int, keep: float = 0.8,
                refusal_anchor: Path | None = None, refusal_share: float = 0.2,
                harmful_ref: Path = DEMO / "harmful_ref.jsonl") -> tuple[Path, Path, dict]:
    """Make the SOT and instance-baseline curated files for `pool_file` (see module docstring).

    The anchor is 50 rows of `anchor_source` (a clean mix of the same task) that are not in the pool.
    With `refusal_anchor`, SOT gets it as ``sot curate --refusal-anchor`` (share `refusal_share`);
    the classifier is fitted both with and without those rows on its safe side, and the variant
    that keeps fewer harmful rows (then more refusals) is the baseline arm: the stronger safety
    bar, chosen before any fine-tuning but with the pool's labels, an oracle choice in the
    baseline's favour that SOT does not get. Each variant is also tried with the refusal guard (the
    rows `sot_core.curate.select.refusal_rows` judges refusals ranked first, as SOT's default does).
    On pools with refusal rows the baseline keeps as many rows as SOT kept, so that SOT's harmful-row
    budget (which may keep fewer than `keep`) does not make the arms differ in size.
    """
    import subprocess

    import numpy as np

    from sot_core.curate.baselines import classifier
    from sot_core.curate.select import refusal_rows
    from sot_core.data.loaders import load_rows
    from sot_core.embed.encoders import get_encoder

    work.mkdir(parents=True, exist_ok=True)
    mix = json.load(open(pool_file))
    pool = [{"id": f"pool-{i}", "instruction": r["instruction"], "input": r["input"], "output": r["output"]} for i, r in enumerate(mix)]
    write_jsonl(pool, work / "pool.jsonl")
    (work / "labels.csv").write_text("id,label\n" + "".join(f"pool-{i},{'harmful' if r['flag'] == 'unsafe' else 'benign'}\n"
                                                            for i, r in enumerate(mix)))
    seen = {(r["instruction"], r["input"]) for r in mix}
    clean = json.load(open(anchor_source))
    spare = [r for r in clean if (r["instruction"], r["input"]) not in seen]
    anchor = [{"id": f"anchor-{i}", **{k: r[k] for k in ("instruction", "input", "output")}}
              for i, r in enumerate(random.Random(seed).sample(spare, 50))]
    write_jsonl(anchor, work / "anchor.jsonl")
    sot_cli = Path(sys.executable).with_name("sot")
    subprocess.run([str(sot_cli), "curate", "--pool", str(work / "pool.jsonl"), "--safe-anchor", str(work / "anchor.jsonl"),
                    "--harmful-ref", str(harmful_ref), "--labels", str(work / "labels.csv"), "--keep", str(keep),
                    "--out", str(work / "sot"), "--home", str(work / "home")]
                   + (["--refusal-anchor", str(refusal_anchor), "--refusal-share", str(refusal_share)] if refusal_anchor else []),
                   check=True)

    enc = get_encoder("minilm")
    emb = {name: enc.encode(t.column("prompt").to_pylist(), t.column("response").to_pylist())
           for name, t in (("pool", load_rows(str(work / "pool.jsonl"))), ("anchor", load_rows(str(work / "anchor.jsonl"))),
                           ("harmful", load_rows(str(harmful_ref))))}
    rows = load_rows(str(work / "pool.jsonl")).to_pylist()
    harmful_ids = {f"pool-{i}" for i, r in enumerate(mix) if r["flag"] == "unsafe"}
    refusal_ids = {f"pool-{i}" for i, r in enumerate(mix) if r["flag"] == "refusal"}
    safe_sides = {"classifier": emb["anchor"]}
    if refusal_anchor:
        ref = load_rows(str(refusal_anchor))
        safe_sides["classifier+ref"] = np.vstack([emb["anchor"], enc.encode(ref.column("prompt").to_pylist(), ref.column("response").to_pylist())])
    sot_kept = {json.loads(line)["id"] for line in open(work / "sot/curated.jsonl")}
    # The baseline keeps as many rows as SOT did (SOT's harmful-row budget may keep fewer than `keep`), so
    # the arms differ in which rows, not how many; "+guard" variants get SOT's refusal information too
    # (the whole-response judge's refusals ranked first), as in benchmarks.selection_budget.
    n_keep = len(sot_kept) if refusal_ids else int(round(keep * len(pool)))
    protected = refusal_rows([r["response"] for r in rows])
    variants = {}
    for name, safe in safe_sides.items():
        score = classifier(emb["pool"], safe, emb["harmful"])
        guarded = np.where(protected, -np.inf, score)
        for variant, rank in ((name, score), (f"{name}+guard", guarded)):
            order = np.argsort(rank, kind="stable")[:n_keep]
            ids = {rows[i]["id"] for i in order}
            variants[variant] = (len(harmful_ids & ids), -len(refusal_ids & ids), order)
    baseline_name = min(variants, key=lambda k: variants[k][:2])
    kept = variants[baseline_name][2]
    base_file = write_jsonl([{"id": rows[i]["id"], "prompt": rows[i]["prompt"], "response": rows[i]["response"],
                              "source": baseline_name, "weight": 1.0} for i in sorted(kept)], work / "baseline/curated.jsonl")
    facts = {"pool_rows": len(pool), "pool_harmful": len(harmful_ids), "sot_harmful_kept": len(harmful_ids & sot_kept),
             "baseline_harmful_kept": len(harmful_ids & {rows[i]["id"] for i in kept}), "sot_rows": len(sot_kept), "baseline_rows": len(kept),
             "baseline": baseline_name, "baseline_variants": {k: {"harmful_kept": v[0], "refusals_kept": -v[1]} for k, v in variants.items()},
             "harmful_ref": str(harmful_ref), "refusal_anchor": str(refusal_anchor) if refusal_anchor else None, "refusal_share": refusal_share if refusal_anchor else None}
    if refusal_ids:  # general_mix pools: safe answers to harmful prompts are wanted data
        facts.update(pool_refusals=len(refusal_ids), sot_refusals_kept=len(refusal_ids & sot_kept),
                     baseline_refusals_kept=len(refusal_ids & {rows[i]["id"] for i in kept}))
    print("[curate]", json.dumps(facts), flush=True)
    return work / "sot/curated.jsonl", base_file, facts


def n_prompts_arg(text: str) -> int:
    """``--n-harmful``: a positive count, or 'all' (every distinct held-out prompt)."""
    if text == "all":
        return 10**9  # harmful_prompts stops when the sets run out
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive count or 'all', got {text!r}")
    return int(text)


def default_out(args, work: Path) -> Path:
    """Smoke runs stay in the work folder; real runs go to results/safety_e2e/<pool>.json."""
    if args.smoke:
        return work / "smoke.json"
    if args.pool is None:
        return RESULTS / "safety_e2e" / "sst2.json"
    return RESULTS / "safety_e2e" / f"{Path(str(args.pool)).stem}.json"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="SOT end-to-end safety benchmark")
    ap.add_argument("--sot", type=Path, help="SOT curated.jsonl (top 80%% with weights)")
    ap.add_argument("--baseline", type=Path, help="instance-level baseline curated.jsonl (top 80%%)")
    ap.add_argument("--pool", type=Path, default=None, help=f"contaminated pool (default: shared {DEFAULT_POOL}); "
                                                                "'general': a general-instruction pool (general_mix)")
    ap.add_argument("--base", default=None, help="aligned base model folder (default: build with sot_core.train.align)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("SOT_HOME", ".sot")) / "bench_safety_e2e")
    ap.add_argument("--keep", type=float, default=0.8, help="fraction kept by the random arm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-seed", type=int, default=None,
                    help="LoRA and replay-mix seed (default: --seed); the evaluation prompts stay those of --seed, "
                         "so a second training seed pairs with the first run's verdicts")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=FILE",
                    help="an extra arm trained on a curated.jsonl (repeatable), e.g. a curation variant")
    ap.add_argument("--replay-fraction", type=float, default=0.0,
                    help="also run sot_replay and random_replay: those arms plus this share of held-out refusals")
    ap.add_argument("--arms", default=None, help="comma-separated arms to run (default: all)")
    ap.add_argument("--n-harmful", type=n_prompts_arg, default="all",
                    help="held-out harmful prompts per arm, or 'all' (default: every distinct one of the shared sets)")
    ap.add_argument("--curate", action="store_true", help="make the SOT and baseline curated files first (see docstring)")
    ap.add_argument("--refusal-anchor", type=Path, default=None,
                    help="with --curate: safe answers to harmful prompts for the anchor (sot curate --refusal-anchor)")
    ap.add_argument("--refusal-share", type=float, default=0.2, help="with --refusal-anchor: its share of the anchor mass")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; writes <work>/smoke/smoke.json")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    data = shared_data_dir()
    work = args.work / ("smoke" if args.smoke else "full")
    harmful_ref = DEMO / "harmful_ref.jsonl"
    if str(args.pool) == "general":
        pool_file, anchor_source = general_mix(data, work / "curation", args.seed)
        # the 463-row PyRIT reference of benchmarks.selection_budget, whose budget figures this run tests
        harmful_ref = write_jsonl(pyrit_harmful_reference(data), work / "curation/pyrit_harmful_ref.jsonl")
    else:
        pool_file = args.pool or data / DEFAULT_POOL
        anchor_source = pool_file.parent / "train_merged_n1000_p0.json"
    curation = None
    if args.curate:
        args.sot, args.baseline, curation = curate_arms(pool_file, anchor_source, work / "curation", args.seed, args.keep,
                                                        args.refusal_anchor, args.refusal_share, harmful_ref)
    pool = pool_rows(pool_file)
    rng = random.Random(args.seed)
    train_seed = args.seed if args.train_seed is None else args.train_seed
    if args.smoke:
        pool = rng.sample(pool, 24)
        cfg = LoraTrainConfig(epochs=1, batch_size=4, max_length=96, seed=args.seed, checkpoint_every=0)
        spec = EvalSpec(n_harmful=8, n_benign=4, n_xstest=4, n_utility=8, max_new_tokens=16, batch_size=8, per_prompt=True)
    else:
        # 128 tokens (not 192): SST-2 rows are short, and a batch holding one long harmful answer
        # is padded to the cap, so 192 would cost ~1.5x the time for the 10% of rows it affects.
        cfg = LoraTrainConfig(epochs=2, batch_size=8, max_length=128, seed=train_seed, checkpoint_every=25)
        spec = EvalSpec(n_harmful=args.n_harmful, n_benign=100, n_xstest=125, n_utility=200, seed=args.seed, per_prompt=True)

    if args.base:
        base = args.base
    elif args.smoke:
        base = "smollm2"  # plumbing only: the unaligned model avoids a 15-minute alignment
    else:
        from sot_core.train.align import align

        base = str(align(progress=lambda s: print("[align]", s, flush=True)))

    arms: dict[str, Path | None] = {"aligned_base": None, "full_pool": write_jsonl(pool, work / "data/full_pool.jsonl"),
                                    "random": write_jsonl(rng.sample(pool, int(args.keep * len(pool))), work / "data/random.jsonl")}
    for name, src in (("instance_baseline", args.baseline), ("sot", args.sot)):
        if src is not None:
            rows = read_curated(src)
            if args.smoke:  # keep the smoke run small whatever file was given
                rows = rows[:20]
            arms[name] = write_jsonl(rows, work / f"data/{name}.jsonl")
        elif args.smoke:  # stand-in so the smoke run exercises weighted training too
            rows = [dict(r, weight=w) for r, w in zip(rng.sample(pool, 19), [0.5, 1.5] * 10)]
            arms[name] = write_jsonl(rows, work / f"data/{name}.jsonl")
        else:
            print(f"[skip] {name}: no curated file given", flush=True)

    if args.replay_fraction > 0:  # safety replay arms: the same data + held-out alignment refusals
        from sot_core.train.align import heldout_refusals
        from sot_core.train.replay import mix_replay

        replay = heldout_refusals(data_dir=data)
        write_jsonl(replay, work / "data/replay_refusals.jsonl")
        for name in ("sot", "random", "instance_baseline"):
            if arms.get(name) is not None:
                mixed = mix_replay(read_curated(arms[name]), replay, args.replay_fraction, train_seed)
                arms[f"{name}_replay"] = write_jsonl(mixed, work / f"data/{name}_replay.jsonl")
    for extra in args.extra:
        name, _, src = extra.partition("=")
        arms[name] = write_jsonl(read_curated(src), work / f"data/{name}.jsonl")
    if args.arms:
        arms = {k: v for k, v in arms.items() if k in args.arms.split(",")}
    results: dict = {}
    verdicts: dict = {}  # arm -> {judge: 0/1 per harmful prompt}, for the paired comparisons
    for name, curated in arms.items():
        t0 = time.time()
        adapter = None
        if curated is not None:
            adapter = train_lora(curated, base, work / "runs" / name, cfg,
                                 progress=lambda s, n, l: print(f"[{name}] step {s}/{n} loss {l:.3f}", flush=True) if s % 25 == 0 or s == n else None)
        t_train = time.time() - t0
        res = evaluate_model(base, adapter, spec)
        results[name] = {k: res.get(k) for k in METRICS}
        verdicts[name] = {"prompts": res["harmful_prompts"], **res["harmful_complied"]}
        results[name].update({"n_benign": res["n_benign"], "n_xstest": res["n_xstest"], "n_train_rows": None if curated is None else sum(1 for _ in open(curated)),
                              "seconds_train": round(t_train, 1), "seconds_eval": round(time.time() - t0 - t_train, 1)})
        print(f"[{name}]", json.dumps(results[name]), flush=True)
        partial = work / "partial.json"  # a run cut short still leaves the arms it finished
        partial.write_text(json.dumps(results, indent=2))
        (work / "partial_verdicts.json").write_text(json.dumps(verdicts))

    out = args.out or default_out(args, work)
    atomic_write_text(json.dumps(results, indent=2), out)  # keyed by arm only; run facts go to the .meta file
    write_verdicts(verdicts, out.with_suffix(".verdicts.json"))  # first: a failed comparison must not lose them
    try:
        paired = compare_arms(verdicts, ("aligned_base", "instance_baseline"))
    except ValueError as err:
        paired = {"error": str(err)}
    spec_record = vars(spec) | {"n_harmful": max((r["n_prompts"] for r in results.values()), default=0)}  # not the 'all' placeholder
    meta = {"base_model": base, "smoke": args.smoke, "train_config": vars(cfg), "eval_spec": spec_record,
            "pool_rows": len(pool), "curation": curation, "paired": paired}
    atomic_write_text(json.dumps(meta, indent=2, default=str), out.with_suffix(".meta.json"))
    print(out)
    return results


if __name__ == "__main__":
    main()
