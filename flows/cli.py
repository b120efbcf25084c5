"""`sot`: the command-line entry point. Each command parses arguments and runs one flow.

Options are generated from the configuration dataclasses (`flows/cli_options.py`): every flow
parameter is an option of the same name (`out_dir` -> `--out-dir`) with the same default.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from sot_core.config import (
    CurateConfig, CurateInputs, EvalSpec, FinetuneInputs, LoraTrainConfig, NightlyInputs, SolverOptions,
)
from sot_prefect.flows.cli_options import add_options, given, take

# The training and evaluation settings offered on the command line (the rest keep their defaults).
TRAIN_OPTIONS = ("epochs", "batch_size", "max_length", "weighting", "learning_rate", "r", "lora_alpha", "seed",
                 "checkpoint_every")
EVAL_OPTIONS = ("n_harmful", "n_benign", "n_xstest", "utility_task")
DEMO_INPUTS = ("pool", "safe_anchor", "harmful_ref")


def add_curate_arguments(p: argparse.ArgumentParser, inputs=CurateInputs) -> dict:
    return {"inputs": add_options(p, inputs), "config": add_options(p, CurateConfig, skip=("solver",)),
            "solver": add_options(p, SolverOptions, prefix="solver_")}


def curate_kwargs(args: argparse.Namespace, dests: dict) -> dict:
    """The curation flow's keyword arguments from parsed options."""
    config = take(args, CurateConfig, dests["config"], solver=take(args, SolverOptions, dests["solver"], "solver_"))
    values = {name: getattr(args, name) for name in dests["inputs"]}
    return {**values, **{f.name: getattr(config, f.name) for f in fields(CurateConfig)}}


def run_curate(args: argparse.Namespace, dests: dict) -> int:
    explicit = [name in given(args) for name in DEMO_INPUTS]
    if any(explicit) and not all(explicit):
        raise SystemExit("sot: error: give --pool, --safe-anchor and --harmful-ref together (or none for the demo)")
    from sot_prefect.flows.curate import curate_dataset

    summary = curate_dataset(**curate_kwargs(args, dests))
    q = summary.get("quality")
    line = f"sot: kept {summary['counts']['selected']} of {summary['counts']['pool']} rows -> {args.out_dir}"
    if q:
        line += f" (harmful kept {q['harmful_kept']}/{q['harmful_total']}, AUROC {q['auroc']:.3f})"
    print(line + budget_line(summary))
    warn(summary)
    return 0


def budget_line(summary: dict) -> str:
    """`; estimated contamination 9.8%` when the harmful-row budget ran."""
    b = summary.get("budget")
    return f"; estimated contamination {b['estimated_contamination']:.1%}" if b else ""


def warn(summary: dict) -> None:
    """The run's composition warnings (mostly harmful-like pool or anchor), one line each on stderr."""
    for w in summary.get("warnings") or []:
        print(f"sot: warning: {w}", file=sys.stderr)


def run_nightly(args: argparse.Namespace, dests: dict) -> int:
    from sot_prefect.flows.nightly import nightly_recuration

    kwargs = curate_kwargs(args, dests)
    kwargs["incoming"] = kwargs["incoming"] or None  # --incoming '' : no folder
    result = nightly_recuration(**kwargs)
    if result["status"] == "no-op":
        print(f"sot: nightly '{args.name}': nothing new since batch {result['batch']}; no version published")
    else:
        drift = result["drift"]
        print(f"sot: nightly '{args.name}' batch {result['batch']}: {result['n_new']} new rows, embedded "
              f"{result['counts']['embedded_now']['pool']}, kept {result['counts']['selected']} of "
              f"{result['counts']['pool']} -> {result['version']} (drift to anchor {drift['to_anchor']:.4f}, "
              f"to harmful {drift['to_harmful']:.4f}){budget_line(result)}")
        warn(result)
    return 0


def add_finetune_arguments(p: argparse.ArgumentParser) -> dict:
    dests = {"inputs": add_options(p, FinetuneInputs), "train": add_options(p, LoraTrainConfig, only=TRAIN_OPTIONS)}
    p.add_argument("--no-eval", action="store_true", help="train only")
    dests["evaluation"] = add_options(p, EvalSpec, only=EVAL_OPTIONS)
    return dests


def evaluation_spec(args: argparse.Namespace, dests: dict) -> EvalSpec:
    # per-prompt verdicts make two runs comparable pair by pair (`sot compare`)
    return take(args, EvalSpec, dests["evaluation"], per_prompt=True)


def write_json_atomic(obj, path: Path) -> None:
    from sot_core.io import atomic_write_text

    atomic_write_text(json.dumps(obj, indent=2, default=str), path)


def run_finetune(args: argparse.Namespace, dests: dict) -> int:
    kwargs = {name: getattr(args, name) for name in dests["inputs"]}
    kwargs["train"] = take(args, LoraTrainConfig, dests["train"])
    if args.no_eval:
        from sot_prefect.flows.finetune_eval import train_only

        result = train_only(**kwargs)
    else:
        from sot_prefect.flows.finetune_eval import finetune_and_evaluate

        result = finetune_and_evaluate(**kwargs, evaluation=evaluation_spec(args, dests))
    if result.get("metrics"):  # the full metrics, per-prompt verdicts included, for `sot compare`
        write_json_atomic(result["metrics"], Path(args.out_dir) / "metrics.json")
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"} |
                     {"metrics": {k: v for k, v in result.get("metrics", {}).items() if not isinstance(v, (dict, list))}},
                     indent=2))
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> dict:
    dests = {"inputs": add_options(p, FinetuneInputs, only=("base_model", "home"))}
    p.add_argument("--adapter", default=None, help="LoRA adapter folder (optional)")
    p.add_argument("--out", dest="out_file", default="out/evaluate/metrics.json", help="metrics JSON file")
    dests["evaluation"] = add_options(p, EvalSpec, only=EVAL_OPTIONS)
    return dests


def run_evaluate(args: argparse.Namespace, dests: dict) -> int:
    from sot_prefect.flows.finetune_eval import evaluate_only

    metrics = evaluate_only(base_model=args.base_model, adapter=args.adapter, evaluation=evaluation_spec(args, dests),
                            home=args.home)
    write_json_atomic(metrics, Path(args.out_file))
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=2))
    return 0


def add_compare_arguments(p: argparse.ArgumentParser) -> dict:
    p.add_argument("a", help="metrics JSON of the reference model (e.g. the aligned base)")
    p.add_argument("b", help="metrics JSON of the model to compare (e.g. after fine-tuning)")
    p.add_argument("--out", default=None, help="also write the comparison as JSON")
    return {}


def run_compare(args: argparse.Namespace, dests: dict) -> int:
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


# command: (help, add arguments -> option groups, run)
COMMANDS = {
    "curate": ("curate a pool (no arguments: the bundled demo)", add_curate_arguments, run_curate),
    "nightly": ("re-curate after new rows arrived (incremental)",
                lambda p: add_curate_arguments(p, NightlyInputs), run_nightly),
    "finetune": ("weighted LoRA fine-tuning on curated data, then evaluation", add_finetune_arguments, run_finetune),
    "evaluate": ("harmfulness, over-refusal and utility of a model (+ adapter)", add_evaluate_arguments, run_evaluate),
    "compare": ("paired comparison of two `sot evaluate` metrics files (B minus A)", add_compare_arguments, run_compare),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The `sot` parser and, per command, the option destinations of each configuration group."""
    parser = argparse.ArgumentParser(prog="sot", description="Safety Optimal Transport curation of fine-tuning data")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's run logs on the console")
    sub = parser.add_subparsers(dest="command", required=True)
    groups = {name: add(sub.add_parser(name, help=help_text)) for name, (help_text, add, _) in COMMANDS.items()}
    return parser, groups


def main(argv: list[str] | None = None) -> int:
    parser, groups = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect waits 20 s for its embedded (ephemeral) server; on a busy 2-core machine it can
    # take longer, and the run then dies with "Timed out while attempting to connect".
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not args.verbose:
        # Errors must read as one line; run logs still reach the Prefect API and UI.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from sot_core.errors import SotError
    from sot_prefect.flows.watchdog import start_watchdog

    if args.command != "compare":  # the one command that starts no Prefect server
        start_watchdog()
    try:
        return COMMANDS[args.command][2](args, groups[args.command])
    except (SotError, ValueError) as err:
        print(f"sot: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, an unwritable output folder: one line naming the file
        print(f"sot: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
