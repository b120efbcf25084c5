"""Every default is written once, in sot_core/config.py: the flows, the `sot` options and the
deployments must agree with it. Each test fails on the first parameter whose default drifted."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from sot_core.config import (
    CurateConfig, CurateInputs, EvalSpec, FinetuneInputs, LoraTrainConfig, NightlyInputs, SolverOptions,
)
from sot_prefect.flows.cli import build_parser
from sot_prefect.flows.curate import curate_dataset
from sot_prefect.flows.finetune_eval import evaluate_only, finetune_and_evaluate, train_only
from sot_prefect.flows.nightly import nightly_recuration

REPO = Path(__file__).resolve().parents[1]
# flow, the config classes its defaults come from, the `sot` command that runs it
FLOWS = [
    (curate_dataset, (CurateInputs, CurateConfig), "curate"),
    (nightly_recuration, (NightlyInputs, CurateConfig), "nightly"),
    (finetune_and_evaluate, (FinetuneInputs,), "finetune"),
    (train_only, (FinetuneInputs,), "finetune"),
    (evaluate_only, (FinetuneInputs,), "evaluate"),
]
NESTED = {"solver": SolverOptions, "train": LoraTrainConfig, "evaluation": EvalSpec}


def flow_defaults(flow) -> dict:
    return {name: p.default for name, p in inspect.signature(flow.fn).parameters.items()}


def config_default(classes, name):
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    raise KeyError(name)


def subparser(command: str) -> tuple[argparse.ArgumentParser, dict]:
    """The parser of `sot COMMAND` and its option destinations per configuration group."""
    parser, groups = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command], groups[command]


@pytest.mark.parametrize("flow,classes,command", FLOWS, ids=[f[0].name for f in FLOWS])
def test_flow_defaults_are_the_config_defaults(flow, classes, command):
    for name, default in flow_defaults(flow).items():
        if name in NESTED:
            assert default == NESTED[name](), f"{flow.name}: {name} default differs from {NESTED[name].__name__}()"
        elif name != "adapter":
            assert default == config_default(classes, name), f"{flow.name}: default of {name} differs from the config"


@pytest.mark.parametrize("flow,classes,command", FLOWS, ids=[f[0].name for f in FLOWS])
def test_every_flow_parameter_is_a_cli_option_with_the_same_default(flow, classes, command):
    sub, groups = subparser(command)
    options = {a.dest: a for a in sub._actions}
    for name, default in flow_defaults(flow).items():
        if name in NESTED:  # a nested config: its group of options carries its fields' defaults
            prefix = "solver_" if name == "solver" else ""
            assert groups.get(name), f"sot {command}: no option for any field of {name}"
            for dest in groups[name]:
                assert sub.get_default(dest) == getattr(default, dest[len(prefix):]), \
                    f"sot {command}: --{dest.replace('_', '-')} default differs from {NESTED[name].__name__}"
        else:
            assert name in options, f"sot {command}: flow parameter {name} has no option --{name.replace('_', '-')}"
            assert sub.get_default(name) == default, f"sot {command}: default of --{name.replace('_', '-')} differs"


def test_cli_options_carry_the_config_help_and_choices():
    sub, _ = subparser("curate")
    options = {a.dest: a for a in sub._actions}
    assert options["mode"].choices == ["push-pull", "pull", "push"]
    assert options["keep"].help.startswith(CurateConfig.__dataclass_fields__["keep"].metadata["help"])
    assert "--out" in options["out_dir"].option_strings  # the old spelling keeps working


@pytest.mark.parametrize("command", sorted({c for _, _, c in FLOWS} | {"compare"}))
def test_every_command_prints_its_help_with_every_option(command):
    """`sot COMMAND --help` formats (a bare % in a config help text once made argparse raise) and shows each flag,
    with the config's help text as written (percent signs included)."""
    sub, _ = subparser(command)
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
        for option in action.option_strings:
            assert option in text, f"sot {command} --help does not show {option}"
    if command in ("curate", "nightly"):
        assert "87.5% of benign rows" in text  # lm_share's help, which holds a bare %


def test_deployment_parameters_agree_with_the_flow_defaults():
    """prefect.yaml may only point inputs at the same demo files by a path relative to the code."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    flows = {f"flows/{f.fn.__module__.rsplit('.', 1)[-1]}.py:{f.fn.__name__}": f for f, _, _ in FLOWS}
    for deployment in spec["deployments"]:
        defaults = flow_defaults(flows[deployment["entrypoint"]])
        for name, value in (deployment.get("parameters") or {}).items():
            assert name in defaults, f"{deployment['name']}: {name} is not a flow parameter"
            same = value == defaults[name] or (REPO / str(value)).resolve() == Path(str(defaults[name])).resolve()
            assert same, f"{deployment['name']}: parameter {name}={value!r} differs from the flow default"


def test_bad_values_are_rejected_once_by_the_config():
    with pytest.raises(ValueError, match="keep must be <= 1"):
        CurateConfig(keep=1.5)
    with pytest.raises(ValueError, match="mode must be one of push-pull, pull, push"):
        CurateConfig(mode="pushpull")
    with pytest.raises(ValueError, match="step_size must be > 0"):
        SolverOptions(step_size=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CurateConfig().keep = 0.5
    assert CurateConfig(solver={"tau": 0.5}).solver == SolverOptions(tau=0.5)  # from JSON
