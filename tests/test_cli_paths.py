"""CLI paths no other test takes: `sot nightly`, nightly-versus-full equivalence, `--stratify
label`, `--knn`, `--mode`, the `--*-field` flags and `sot evaluate`. In-process `main` with the
model-free hash encoder of test_incremental (these tests are about what the flags do, not about
embeddings), a real store in tmp_path and the session's Prefect backend.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import DEMO, read_jsonl, write_jsonl
from sot_prefect.flows.cli import main
from test_incremental import HashEncoder  # noqa: F401 - registers the 'testhash' encoder

REFS = ["--safe-anchor", str(DEMO / "safe_anchor.jsonl"), "--harmful-ref", str(DEMO / "harmful_ref.jsonl")]
COMMON = ["--encoder", "testhash", "--keep", "0.7"]


def demo_rows(n_benign: int, n_harmful: int, start: int = 0) -> list[dict]:
    demo = read_jsonl(DEMO / "pool.jsonl")
    benign = [r for r in demo if not r["id"].startswith("pyrit")][start:start + n_benign]
    harmful = [r for r in demo if r["id"].startswith("pyrit")][start:start + n_harmful]
    return benign + harmful


def curate(tmp_path, pool, out: str, *extra: str) -> tuple[dict, dict]:
    """`sot curate` of `pool` (a path) into tmp_path/out: (run.json, weights.parquet as {column: list})."""
    args = ["curate", "--pool", str(pool), *REFS, "--home", str(tmp_path / "home"), "--out-dir", str(tmp_path / out),
            *COMMON, *extra]
    assert main(args) == 0
    return (json.loads((tmp_path / out / "run.json").read_text()),
            pq.read_table(tmp_path / out / "weights.parquet").to_pydict())


# ---------------------------------------------------------------- nightly

def test_sot_nightly_publishes_new_rows_then_noops_and_equals_a_full_curation(tmp_path, prefect_backend, capsys):
    """`sot nightly` twice with data, once without; the last published version equals `sot curate`
    of the union of the base pool and every incoming file (same ids, weights, selection)."""
    base, day1, day2 = demo_rows(40, 8), demo_rows(10, 2, start=40), demo_rows(6, 2, start=50)
    write_jsonl(base, tmp_path / "base.jsonl")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    nightly = ["nightly", "--incoming", str(incoming), "--base-pool", str(tmp_path / "base.jsonl"), *REFS,
               "--home", str(tmp_path / "home"), "--out-dir", str(tmp_path / "nightly"), "--name", "cli-night",
               *COMMON]
    write_jsonl(day1, incoming / "day1.jsonl")
    assert main(nightly) == 0
    first = capsys.readouterr().out
    assert "sot: nightly 'cli-night' batch 1: " in first and f"of {len(base) + len(day1)} -> cli-night-" in first
    write_jsonl(day2, incoming / "day2.jsonl")
    assert main(nightly) == 0
    assert "batch 2: 8 new rows" in capsys.readouterr().out
    assert main(nightly) == 0
    assert "nothing new since batch 2; no version published" in capsys.readouterr().out

    night = pq.read_table(tmp_path / "nightly" / "weights.parquet").to_pydict()
    union = base + day1 + day2
    write_jsonl(union, tmp_path / "union.jsonl")
    _, full = curate(tmp_path, tmp_path / "union.jsonl", "full")
    assert sorted(night["id"]) == sorted(full["id"]) == sorted(r["id"] for r in union)
    by_id = {i: k for k, i in enumerate(full["id"])}
    order = [by_id[i] for i in night["id"]]
    np.testing.assert_allclose(np.array(night["weight"]), np.array(full["weight"])[order], rtol=1e-4, atol=1e-7)
    assert [i for i, s in zip(night["id"], night["selected"]) if s] == \
        [i for i, s in zip(night["id"], np.array(full["selected"])[order]) if s]


# ---------------------------------------------------------------- curate flags

def test_mode_push_and_pull_change_the_solve_and_are_recorded(tmp_path, prefect_backend):
    write_jsonl(demo_rows(40, 10), tmp_path / "pool.jsonl")
    runs = {mode: curate(tmp_path, tmp_path / "pool.jsonl", mode, "--mode", mode)
            for mode in ("push-pull", "push", "pull")}
    for mode, (info, _) in runs.items():
        assert info["config"]["mode"] == mode and info["solver"]["mode"] == mode
    assert runs["pull"][0]["solver"]["marginal_error_harmful"] is None
    assert runs["push"][0]["solver"]["marginal_error_anchor"] is None
    w = {mode: np.array(t["weight"]) for mode, (_, t) in runs.items()}
    assert np.abs(w["push"] - w["pull"]).sum() > 1e-3 and np.abs(w["push-pull"] - w["pull"]).sum() > 1e-3


def test_knn_costs_are_used_and_stay_close_to_dense(tmp_path, prefect_backend):
    write_jsonl(demo_rows(40, 10), tmp_path / "pool.jsonl")
    dense_info, dense = curate(tmp_path, tmp_path / "pool.jsonl", "dense")
    knn_info, knn = curate(tmp_path, tmp_path / "pool.jsonl", "knn", "--knn", "8")
    assert dense_info["config"]["knn"] is None and knn_info["config"]["knn"] == 8
    assert "costs" not in knn_info["cached_stages"]  # the kNN costs were built, not the dense ones reused
    wd, wk = np.array(dense["weight"]), np.array(knn["weight"])
    assert 0 < np.abs(wd - wk).sum() < 0.5


def renamed(rows: list[dict], prefix: str) -> list[dict]:
    return [{"uid": f"{prefix}{i}", "question": r["prompt"], "answer": r["response"]} for i, r in enumerate(rows)]


def test_field_flags_read_renamed_columns(tmp_path, prefect_backend):
    """--id-field/--prompt-field/--response-field name the columns of every input file."""
    rows = renamed(demo_rows(30, 6), "u")
    write_jsonl(rows, tmp_path / "pool.jsonl")
    for name in ("safe_anchor", "harmful_ref"):
        write_jsonl(renamed(read_jsonl(DEMO / f"{name}.jsonl"), name), tmp_path / f"{name}.jsonl")
    args = ["curate", "--pool", str(tmp_path / "pool.jsonl"), "--safe-anchor", str(tmp_path / "safe_anchor.jsonl"),
            "--harmful-ref", str(tmp_path / "harmful_ref.jsonl"), "--home", str(tmp_path / "home"),
            "--out-dir", str(tmp_path / "out"), *COMMON, "--id-field", "uid", "--prompt-field", "question",
            "--response-field", "answer"]
    assert main(args) == 0
    table = pq.read_table(tmp_path / "out" / "weights.parquet").to_pydict()
    assert table["id"] == [r["uid"] for r in rows]
    by_id = {r["uid"]: r for r in rows}
    for row in read_jsonl(tmp_path / "out" / "curated.jsonl"):
        assert (row["prompt"], row["response"]) == (by_id[row["id"]]["question"], by_id[row["id"]]["answer"])


def test_stratify_label_keeps_the_label_balance(tmp_path, prefect_backend):
    """A classification pool (40 'positive' / 20 'negative' answers) plus free-form harmful rows:
    with --stratify label the kept rows keep the 2:1 label ratio."""
    demo = demo_rows(60, 10)
    rows = [{"id": f"c{i}", "prompt": r["prompt"], "response": "positive" if i % 3 else "negative"}
            for i, r in enumerate(demo[:60])] + demo[60:]
    write_jsonl(rows, tmp_path / "pool.jsonl")
    info, table = curate(tmp_path, tmp_path / "pool.jsonl", "out", "--stratify", "label", "--harmful-recall", "0")
    assert info["config"]["stratify"] == "label"
    kept = [r for r in read_jsonl(tmp_path / "out" / "curated.jsonl")]
    pos, neg = (sum(r["response"] == label for r in kept) for label in ("positive", "negative"))
    assert neg > 0 and abs(pos / neg - 2.0) < 0.15
    for label in ("positive", "negative"):  # mean training weight 1 within each label group
        assert np.mean([r["weight"] for r in kept if r["response"] == label]) == pytest.approx(1.0, abs=1e-9)


# ---------------------------------------------------------------- evaluate

@pytest.mark.slow
def test_sot_evaluate_writes_per_prompt_results(tmp_path, prefect_backend, small_refusal_judge, capsys):
    """`sot evaluate` of a tiny random model (real generation, keyword judge on shared prompts)."""
    from test_llm_encoder import make_tiny_model

    model = make_tiny_model(tmp_path / "m")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--base-model", str(model), "--out", str(out), "--home", str(tmp_path / "home"),
                 "--n-harmful", "3", "--n-benign", "2", "--n-xstest", "2", "--utility-task", "none"]) == 0
    result = json.loads(out.read_text())
    assert result["n_prompts"] == 3 and len(result["harmful_prompts"]) == 3
    assert 0.0 <= result["harmful_rate_keyword"] <= 1.0
