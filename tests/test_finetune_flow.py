"""`sot finetune` through its Prefect flow on a tiny random Llama (the real SmolLM2 is
too slow for a unit test): the adapter and its manifest appear, and a second run is served from
the task cache keyed on the curated file's hash."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


from sot_prefect.flows.cli import main
from test_train import make_tiny_model, write_curated

REPO = Path(__file__).resolve().parents[1]


def test_finetune_cli_trains_and_reuses_the_adapter(tmp_path, prefect_backend, capsys):
    base = make_tiny_model(tmp_path / "tiny")
    curated = write_curated(tmp_path / "curated.jsonl")
    args = ["finetune", "--curated", str(curated), "--base", str(base), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "4", "--max-length", "32", "--no-eval", "--home", str(tmp_path / "home")]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    manifest = json.loads((tmp_path / "run" / "lora" / "adapter" / "manifest.json").read_text())
    assert first["adapter"].endswith("adapter") and manifest["steps"] == 2
    mtime = (tmp_path / "run" / "lora" / "adapter" / "manifest.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "run" / "lora" / "adapter" / "manifest.json").stat().st_mtime_ns == mtime


def test_finetune_cli_replay_mixes_refusals_into_training(tmp_path, prefect_backend, capsys):
    base = make_tiny_model(tmp_path / "tiny")
    curated = write_curated(tmp_path / "curated.jsonl")
    n = sum(1 for _ in open(curated))
    refusals = REPO / "data" / "refusals" / "pyrit_refusals.jsonl"
    args = ["finetune", "--curated", str(curated), "--base", str(base), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "4", "--max-length", "32", "--no-eval", "--home", str(tmp_path / "home"),
            "--replay", str(refusals), "--replay-fraction", "0.5"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "run" / "lora" / "adapter" / "manifest.json").read_text())
    assert manifest["curated_path"].endswith("train_with_replay.jsonl")
    assert manifest["n_rows"] == n + round(0.5 * n)


@pytest.mark.slow
def test_finetune_with_evaluation_writes_metrics_that_sot_compare_reads(tmp_path, prefect_backend, capsys,
                                                                   small_refusal_judge):
    """The evaluation draws its prompts from the shared datasets (skipped without them, failed under
    SOT_REQUIRE_DATA=1); its learned judge is the small one of `small_refusal_judge`."""
    base = make_tiny_model(tmp_path / "tiny")
    curated = write_curated(tmp_path / "curated.jsonl")
    run = tmp_path / "run"
    args = ["finetune", "--curated", str(curated), "--base", str(base), "--out", str(run), "--epochs", "1",
            "--batch-size", "4", "--max-length", "32", "--home", str(tmp_path / "home"),
            "--n-harmful", "6", "--n-benign", "2", "--n-xstest", "2", "--utility-task", "none"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["harmful_prompts"]) == metrics["n_prompts"] == 6
    assert set(metrics["harmful_complied"]) >= {"keyword"}
    capsys.readouterr()
    assert main(["compare", str(run / "metrics.json"), str(run / "metrics.json")]) == 0
    assert "on 6 shared harmful prompts" in capsys.readouterr().out
