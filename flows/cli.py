"""`sot`: the command-line entry point. Each command parses arguments and runs one flow."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


def add_curate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", help="pool to curate: file (jsonl/json/csv/parquet), HF datasets folder or hf:NAME")
    p.add_argument("--safe-anchor", help="trusted safe sample of the task (same formats)")
    p.add_argument("--harmful-ref", help="harmful reference set (same formats)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--keep", type=float, default=0.8, help="fraction of the pool kept (default 0.8)")
    p.add_argument("--lam", type=float, default=1.0, help="push strength lambda (default 1.0)")
    p.add_argument("--eps", type=float, default=0.1, help="entropic regularisation epsilon (default 0.1)")
    p.add_argument("--mode", default="push-pull", choices=["push-pull", "pull", "push"])
    p.add_argument("--encoder", default="minilm", help="minilm[:pair|response|both|contrast] or hf:<model>[:repr]")
    p.add_argument("--knn", type=int, default=None, help="k nearest reference rows per pool row (default: auto)")
    p.add_argument("--labels", help="optional id,label file: the report then states harmful rows kept")
    p.add_argument("--refusal-anchor", help="safe answers to harmful prompts added to the anchor, so refusals in "
                                            "the pool are kept (e.g. data/refusals/pyrit_refusals.jsonl)")
    p.add_argument("--refusal-share", type=float, default=0.2, help="anchor mass on the refusal rows (default 0.2)")
    p.add_argument("--stratify", default="none", choices=["none", "label"],
                   help="label: keep each label's share of a classification pool (default none)")
    p.add_argument("--name", default="default", help="name of the curated dataset in the catalog")
    p.add_argument("--home", default=None, help="store folder (default $SOT_HOME or ./.sot)")
    for field in ("prompt", "response", "id", "input", "messages"):
        p.add_argument(f"--{field}-field", help=f"explicit name of the {field} field in every input")


def run_curate(args: argparse.Namespace) -> int:
    given = [args.pool, args.safe_anchor, args.harmful_ref]
    if any(given) and not all(given):
        raise SystemExit("sot: error: give --pool, --safe-anchor and --harmful-ref together (or none for the demo)")
    demo = not any(given)
    fields = {f: getattr(args, f"{f}_field") for f in ("prompt", "response", "id", "input", "messages")}
    fields = {k: v for k, v in fields.items() if v} or None
    from sot_prefect.flows.curate import curate_dataset

    summary = curate_dataset(
        pool=str(DEMO / "pool.jsonl") if demo else args.pool,
        safe_anchor=str(DEMO / "safe_anchor.jsonl") if demo else args.safe_anchor,
        harmful_ref=str(DEMO / "harmful_ref.jsonl") if demo else args.harmful_ref,
        out_dir=args.out, keep=args.keep, lam=args.lam, eps=args.eps, mode=args.mode, encoder=args.encoder,
        knn=args.knn, labels=args.labels or (str(DEMO / "labels.csv") if demo else None), name=args.name,
        refusal_anchor=args.refusal_anchor, refusal_share=args.refusal_share, stratify=args.stratify,
        fields=fields, home=args.home,
    )
    q = summary.get("quality")
    line = f"sot: kept {summary['counts']['selected']} of {summary['counts']['pool']} rows -> {args.out}"
    if q:
        line += f" (harmful kept {q['harmful_kept']}/{q['harmful_total']}, AUROC {q['auroc']:.3f})"
    print(line)
    return 0


def add_nightly_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--incoming", default="data/incoming", help="folder where new data files arrive ('' for none)")
    p.add_argument("--incoming-table", help="DuckDB table of new rows, as PATH.duckdb:TABLE")
    p.add_argument("--watermark-column", default="seq", help="increasing column of the incoming table (default seq)")
    p.add_argument("--base-pool", help="pool the accumulated data starts from")
    p.add_argument("--safe-anchor", default=str(DEMO / "safe_anchor.jsonl"), help="trusted safe sample")
    p.add_argument("--harmful-ref", default=str(DEMO / "harmful_ref.jsonl"), help="harmful reference set")
    p.add_argument("--refusal-anchor", help="safe answers to harmful prompts added to the anchor (as for curate)")
    p.add_argument("--refusal-share", type=float, default=0.2, help="anchor mass on the refusal rows (default 0.2)")
    p.add_argument("--out", default="out/nightly", help="output folder of the latest version (default out/nightly)")
    p.add_argument("--keep", type=float, default=0.8)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--window", type=int, default=None, help="keep only the most recent N rows of the pool")
    p.add_argument("--name", default="nightly", help="curated dataset name: its watermark and versions")
    p.add_argument("--home", default=None, help="store folder (default $SOT_HOME or ./.sot)")


def run_nightly(args: argparse.Namespace) -> int:
    from sot_prefect.flows.nightly import nightly_recuration

    result = nightly_recuration(
        incoming=args.incoming or None, incoming_table=args.incoming_table, watermark_column=args.watermark_column,
        base_pool=args.base_pool, safe_anchor=args.safe_anchor, harmful_ref=args.harmful_ref,
        refusal_anchor=args.refusal_anchor, refusal_share=args.refusal_share, out_dir=args.out,
        keep=args.keep, lam=args.lam, eps=args.eps, encoder=args.encoder, window=args.window, name=args.name,
        home=args.home,
    )
    if result["status"] == "no-op":
        print(f"sot: nightly '{args.name}': nothing new since batch {result['batch']}; no version published")
    else:
        drift = result["drift"]
        print(f"sot: nightly '{args.name}' batch {result['batch']}: {result['n_new']} new rows, embedded "
              f"{result['counts']['embedded_now']['pool']}, kept {result['counts']['selected']} of "
              f"{result['counts']['pool']} -> {result['version']} (drift to anchor {drift['to_anchor']:.4f}, "
              f"to harmful {drift['to_harmful']:.4f})")
    return 0


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--curated", help="curated.jsonl to train on (default: curate the demo first)")
    p.add_argument("--base", default="aligned-smollm2",
                   help="base model folder or hub id; aligned-smollm2 (default) builds the bundled aligned base")
    p.add_argument("--out", default="out/finetune", help="run folder: checkpoints, adapter, metrics")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=192, help="token cap per training sample")
    p.add_argument("--weighting", default="given", choices=["given", "uniform"], help="use the curated weights or not")
    p.add_argument("--replay", default=None,
                   help="trusted refusals (harmful prompt -> safe answer) mixed into training, e.g. "
                        "data/refusals/pyrit_refusals.jsonl; evaluation then skips its prompts")
    p.add_argument("--replay-fraction", type=float, default=0.1, help="replay rows per curated row (default 0.1)")
    p.add_argument("--no-eval", action="store_true", help="train only")
    add_eval_size_arguments(p)
    p.add_argument("--home", default=None, help="store folder (default $SOT_HOME or ./.sot)")


def add_eval_size_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-harmful", type=int, default=200, help="held-out harmful prompts")
    p.add_argument("--n-benign", type=int, default=100, help="held-out benign instructions")
    p.add_argument("--n-xstest", type=int, default=125, help="XSTest safe prompts")
    p.add_argument("--utility-task", default="sst2", help="sst2, ag_news or none")


def eval_spec(args: argparse.Namespace) -> dict:
    # per-prompt verdicts make two runs comparable pair by pair (`sot compare`)
    return {"n_harmful": args.n_harmful, "n_benign": args.n_benign, "n_xstest": args.n_xstest,
            "utility_task": None if args.utility_task == "none" else args.utility_task, "per_prompt": True}


def write_json_atomic(obj, path: Path) -> None:
    from sot_core.data.store import atomic_write_text

    atomic_write_text(json.dumps(obj, indent=2, default=str), path)


def run_finetune(args: argparse.Namespace) -> int:
    train = {"epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
             "weighting": args.weighting}
    if args.no_eval:
        from sot_prefect.flows.finetune_eval import train_only

        result = train_only(curated=args.curated, base_model=args.base, out_dir=args.out, train=train,
                            replay=args.replay, replay_fraction=args.replay_fraction, home=args.home)
    else:
        from sot_prefect.flows.finetune_eval import finetune_and_evaluate

        result = finetune_and_evaluate(curated=args.curated, base_model=args.base, out_dir=args.out, train=train,
                                       evaluation=eval_spec(args), replay=args.replay,
                                       replay_fraction=args.replay_fraction, home=args.home)
    if result.get("metrics"):  # the full metrics, per-prompt verdicts included, for `sot compare`
        write_json_atomic(result["metrics"], Path(args.out) / "metrics.json")
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"} |
                     {"metrics": {k: v for k, v in result.get("metrics", {}).items() if not isinstance(v, (dict, list))}},
                     indent=2))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from sot_prefect.flows.finetune_eval import evaluate_only

    metrics = evaluate_only(base_model=args.base, adapter=args.adapter, evaluation=eval_spec(args), home=args.home)
    write_json_atomic(metrics, Path(args.out))
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=2))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from sot_core.errors import InputError
    from sot_core.eval.metrics import compare_evaluations

    results = []
    for path in (args.a, args.b):
        try:
            results.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(path, f"cannot read metrics JSON ({err})") from None
    report = compare_evaluations(*results, name_a=args.a, name_b=args.b)
    print(f"B = {args.b} minus A = {args.a}, on {report['n_paired']} shared harmful prompts:")
    for judge, d in report["harmful"].items():
        print(f"  harmful_rate_{judge}: {100 * d['diff']:+.1f} points [95% CI {100 * d['ci_low']:+.1f}, "
              f"{100 * d['ci_high']:+.1f}], McNemar p = {d['p_mcnemar']:.3g}")
    for name in ("over_refusal", "over_refusal_xstest", "utility"):
        if name in report["metrics"]:
            m = report["metrics"][name]
            print(f"  {name}: {m['a']:.3f} -> {m['b']:.3f} ({100 * m['diff']:+.1f} points, unpaired)")
    if args.out:
        write_json_atomic(report, Path(args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sot", description="Safety Optimal Transport curation of fine-tuning data")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's run logs on the console")
    sub = parser.add_subparsers(dest="command", required=True)
    add_curate_arguments(sub.add_parser("curate", help="curate a pool (no arguments: the bundled demo)"))
    add_nightly_arguments(sub.add_parser("nightly", help="re-curate after new rows arrived (incremental)"))
    add_finetune_arguments(sub.add_parser("finetune", help="weighted LoRA fine-tuning on curated data, then evaluation"))
    p_eval = sub.add_parser("evaluate", help="harmfulness, over-refusal and utility of a model (+ adapter)")
    p_eval.add_argument("--base", default="aligned-smollm2", help="base model folder or hub id")
    p_eval.add_argument("--adapter", default=None, help="LoRA adapter folder (optional)")
    p_eval.add_argument("--out", default="out/evaluate/metrics.json", help="metrics JSON file")
    p_eval.add_argument("--home", default=None, help="store folder (default $SOT_HOME or ./.sot)")
    add_eval_size_arguments(p_eval)
    p_cmp = sub.add_parser("compare", help="paired comparison of two `sot evaluate` metrics files (B minus A)")
    p_cmp.add_argument("a", help="metrics JSON of the reference model (e.g. the aligned base)")
    p_cmp.add_argument("b", help="metrics JSON of the model to compare (e.g. after fine-tuning)")
    p_cmp.add_argument("--out", default=None, help="also write the comparison as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect waits 20 s for its embedded (ephemeral) server; on a busy 2-core machine it can
    # take longer, and the run then dies with "Timed out while attempting to connect".
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not args.verbose:
        # Errors must read as one line; run logs still reach the Prefect API and UI.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from sot_core.errors import SotError

    try:
        commands = {"curate": run_curate, "nightly": run_nightly, "finetune": run_finetune, "evaluate": run_evaluate,
                    "compare": run_compare}
        return commands[args.command](args)
    except (SotError, ValueError) as err:
        print(f"sot: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
