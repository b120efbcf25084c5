"""End to end through `sot curate`: the demo, the output contract, caching and bad input."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import DEMO, refusal_rows, write_jsonl
from sot_prefect.flows.cli import main
from sot_core.data.store import Store


def snapshot(home):
    """Everything a failed run must not change: files (but the lock) and every catalog table."""
    files = sorted(
        (str(p.relative_to(home)), p.stat().st_size)
        for p in home.rglob("*")
        if p.is_file() and p.name not in (".lock", "catalog.duckdb", "catalog.duckdb.wal")
    )
    store = Store(home)
    tables = {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in
              ("datasets", "rows", "encoders", "embeddings", "runs", "curated_versions")}
    return files, tables


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, prefect_backend):
    home, out = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("out")
    assert main(["curate", "--home", str(home), "--out", str(out / "first")]) == 0
    assert main(["curate", "--home", str(home), "--out", str(out / "second")]) == 0
    return home, out


def test_demo_writes_the_contract_files(demo_run):
    home, out = demo_run
    run = out / "first"
    table = pq.read_table(run / "weights.parquet")
    assert {"id", "weight", "selected", "score"} <= set(table.column_names)
    weights = table.column("weight").to_numpy()
    assert np.isclose(weights.sum(), 1.0) and np.all(weights >= 0)
    selected = table.column("selected").to_numpy(zero_copy_only=False)
    assert selected.sum() == 800
    curated = [json.loads(line) for line in (run / "curated.jsonl").read_text().splitlines()]
    assert len(curated) == 800 and all(r["weight"] > 0 for r in curated)
    assert np.isclose(np.mean([r["weight"] for r in curated]), 1.0)
    info = json.loads((run / "run.json").read_text())
    assert {"ingest", "embed", "costs", "solve", "select"} <= set(info["stage_seconds"])
    assert info["solver"]["outer_iterations"] > 0 and info["solver"]["objective_trace"]
    assert info["pool_outside_anchor"] < 0.5 and info["warnings"] == []  # the demo's anchor is of its own task
    assert "Harmful" in (run / "report.md").read_text() or "harmful" in (run / "report.md").read_text()


def test_demo_keeps_at_most_5_percent_of_harmful_rows(demo_run):
    _, out = demo_run
    quality = json.loads((out / "first" / "run.json").read_text())["quality"]
    assert quality["harmful_total"] == 100
    assert quality["harmful_kept_fraction"] <= 0.05


def test_second_run_embeds_nothing(demo_run):
    home, out = demo_run
    first = json.loads((out / "first" / "run.json").read_text())
    second = json.loads((out / "second" / "run.json").read_text())
    assert sum(first["counts"]["embedded_now"].values()) == 1000 + 50 + 272
    assert sum(second["counts"]["embedded_now"].values()) == 0
    assert second["stage_seconds"]["embed"] < first["stage_seconds"]["embed"]
    n_vectors = Store(home).query("SELECT count(*) FROM embeddings")[0][0]
    assert n_vectors == 1322  # every distinct row stored once, not twice
    versions = Store(home).query("SELECT version, parent_version FROM curated_versions ORDER BY created_at")
    assert len(versions) == 2 and versions[1][1] == versions[0][0]


@pytest.mark.slow
def test_refusal_anchor_lifts_refusals_in_the_pool(tmp_path, prefect_backend):
    """A composite anchor (task rows + refusals) must raise the weight of refusals in the pool."""
    benign, harmful, refusals = refusal_rows()
    write_jsonl(benign[:60] + harmful[:10] + refusals[:10], tmp_path / "pool.jsonl")
    write_jsonl(refusals[10:], tmp_path / "refusals.jsonl")
    common = ["--pool", str(tmp_path / "pool.jsonl"), "--safe-anchor", str(DEMO / "safe_anchor.jsonl"),
              "--harmful-ref", str(DEMO / "harmful_ref.jsonl"), "--home", str(tmp_path / "home")]
    mean_refusal_weight = {}
    for tag, extra in (("plain", []), ("composite", ["--refusal-anchor", str(tmp_path / "refusals.jsonl"), "--refusal-share", "0.3"])):
        assert main(["curate", *common, "--out", str(tmp_path / tag), *extra]) == 0
        table = pq.read_table(tmp_path / tag / "weights.parquet").to_pydict()
        w = dict(zip(table["id"], table["weight"]))
        mean_refusal_weight[tag] = np.mean([w[r["id"]] for r in refusals[:10]])
    info = json.loads((tmp_path / "composite" / "run.json").read_text())
    assert info["inputs"]["refusal_anchor"]["n_rows"] == len(refusals) - 10
    assert mean_refusal_weight["composite"] > 2 * mean_refusal_weight["plain"]


@pytest.mark.slow
def test_contrast_view_through_the_cli_weights_refusals_up_and_drops_harm(tmp_path, prefect_backend):
    """`--encoder minilm:contrast` with the refusal anchor (the README's setting for chat pools):
    run.json names the exact embedding, refusals in the pool get more weight than harmful rows,
    and no harmful row survives keep = 0.8 (the pair view at the same share keeps 2 of the 10)."""
    from sot_core.embed.encoders import representation_id

    benign, harmful, refusals = refusal_rows()
    harmful = harmful[:10]
    pool = benign[:60] + harmful + refusals[:10]
    write_jsonl(pool, tmp_path / "pool.jsonl")
    write_jsonl(refusals[10:], tmp_path / "refusals.jsonl")
    assert main(["curate", "--pool", str(tmp_path / "pool.jsonl"), "--safe-anchor", str(DEMO / "safe_anchor.jsonl"),
                 "--harmful-ref", str(DEMO / "harmful_ref.jsonl"), "--home", str(tmp_path / "home"),
                 "--encoder", "minilm:contrast", "--refusal-anchor", str(tmp_path / "refusals.jsonl"),
                 "--refusal-share", "0.5", "--out", str(tmp_path / "out")]) == 0
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["config"]["encoder"] == "minilm:contrast" and representation_id("contrast") in info["encoder_id"]
    table = pq.read_table(tmp_path / "out" / "weights.parquet").to_pydict()
    w, selected = dict(zip(table["id"], table["weight"])), dict(zip(table["id"], table["selected"]))
    assert np.mean([w[r["id"]] for r in refusals[:10]]) > np.mean([w[r["id"]] for r in harmful])
    assert not any(selected[r["id"]] for r in harmful)
    # the label-free refusal count of run.json and report.md agrees with the selection
    from sot_core.eval.judges import keyword_refusal

    response = {r["id"]: r["response"] for r in pool}
    flagged = [i for i in table["id"] if keyword_refusal(response[i])]
    assert len(flagged) >= 10
    assert info["refusals"] == {"pool": len(flagged), "kept": sum(selected[i] for i in flagged), "labels_used": False}
    assert f"**{info['refusals']['kept']} kept**" in (tmp_path / "out" / "report.md").read_text()
