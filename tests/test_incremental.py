"""Incremental re-curation: watermark over a folder and a DuckDB table, batches, drift, the nightly flow."""
from __future__ import annotations

import hashlib
import json

import duckdb
import numpy as np
import pytest

from conftest import DEMO, read_jsonl, refusal_rows, write_jsonl
from sot_core.config import CurateConfig
from sot_core.curate import incremental
from sot_core.curate.pipeline import load_embeddings
from sot_core.embed.encoders import ENCODERS, Encoder
from sot_core.errors import InputError, StoreError
from sot_core.data.store import Store


class HashEncoder(Encoder):
    """Deterministic, model-free vectors: the nightly tests are about bookkeeping, not embeddings."""

    dim = 32
    encoder_id = "test-hash:v1"

    def _embed_texts(self, texts, batch_size, progress):
        out = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8).astype(np.float32) - 127.5
                        for t in texts])
        if progress is not None:
            progress(len(texts))
        return out


ENCODERS["testhash"] = HashEncoder


def write_rows(path, start, n, tag="row"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": f"{tag} question {i}", "response": f"answer {i}"}) + "\n"
                            for i in range(start, start + n)))


def test_folder_watermark_consumes_each_file_once(tmp_path):
    store, incoming = Store(tmp_path / "home"), tmp_path / "incoming"
    with pytest.raises(InputError, match="does not exist"):  # missing folder: a failure (issue 16), not a quiet night
        incremental.stage_batch(store, "n", str(incoming))
    write_rows(incoming / "a.jsonl", 0, 5)
    first = incremental.stage_batch(store, "n", str(incoming))
    assert first["n_new"] == 5 and list(first["files"]) == ["a.jsonl"] and first["prev_seq"] == 0
    # not committed yet: a rerun sees the same rows again (a failed night loses nothing)
    assert incremental.stage_batch(store, "n", str(incoming))["dataset_id"] == first["dataset_id"]
    incremental.commit_batch(store, first, first["dataset_id"], "v1", 5, None)
    assert incremental.stage_batch(store, "n", str(incoming))["n_new"] == 0
    write_rows(incoming / "b.jsonl", 5, 3)
    (incoming / ".c.jsonl.tmp").write_text("half written")
    second = incremental.stage_batch(store, "n", str(incoming))
    assert second["n_new"] == 3 and list(second["files"]) == ["b.jsonl"]
    assert second["batch_dataset_ids"] == [first["dataset_id"]]
    # another name has its own watermark
    assert incremental.stage_batch(store, "other", str(incoming))["n_new"] == 8


def test_duckdb_table_watermark(tmp_path):
    store, db = Store(tmp_path / "home"), tmp_path / "incoming.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE rows (seq INTEGER, prompt VARCHAR, response VARCHAR)")
    con.execute("INSERT INTO rows SELECT i, 'q ' || i, 'a ' || i FROM range(1, 7) t(i)")
    con.close()
    spec = f"{db}:rows"
    first = incremental.stage_batch(store, "t", None, spec)
    assert first["n_new"] == 6 and first["table_watermark"] == 6
    incremental.commit_batch(store, first, first["dataset_id"], "v1", 6, {"to_anchor": 0.1, "to_harmful": 0.2})
    assert incremental.stage_batch(store, "t", None, spec)["n_new"] == 0
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO rows VALUES (7, 'q 7', 'a 7'), (8, 'q 8', 'a 8')")
    con.close()
    second = incremental.stage_batch(store, "t", None, spec)
    assert second["n_new"] == 2 and second["table_watermark"] == 8
    # each batch's records: the table's rows without the watermark column, remembered by the commit
    assert second["batch_records_ids"] == [first["records_id"]]
    assert [json.loads(r) for r in store.get_records(second["records_id"]).column("record").to_pylist()] == [
        {"prompt": "q 7", "response": "a 7"}, {"prompt": "q 8", "response": "a 8"}]
    with pytest.raises(Exception, match="watermark column"):
        incremental.stage_batch(store, "t", None, spec, watermark_column="arrived")


def test_concurrent_commit_is_refused_clearly(tmp_path):
    store, incoming = Store(tmp_path / "home"), tmp_path / "incoming"
    write_rows(incoming / "a.jsonl", 0, 4)
    one = incremental.stage_batch(store, "n", str(incoming))
    two = incremental.stage_batch(store, "n", str(incoming))
    incremental.commit_batch(store, one, one["dataset_id"], "v1", 4, None)
    with pytest.raises(StoreError, match="another run committed batch 1"):
        incremental.commit_batch(store, two, two["dataset_id"], "v2", 0, None)
    assert [h["batch"] for h in incremental.drift_history(store, "n")] == [1]


def test_accumulate_dedupes_ids_and_windows(tmp_path):
    store, incoming = Store(tmp_path / "home"), tmp_path / "incoming"
    write_rows(incoming / "a.jsonl", 0, 6)
    a = incremental.stage_batch(store, "n", str(incoming))
    incremental.commit_batch(store, a, a["dataset_id"], "v1", 6, None)
    write_rows(incoming / "b.jsonl", 4, 4)  # rows 4, 5 again (same content, same ids) + 6, 7
    b = incremental.stage_batch(store, "n", str(incoming))
    pool = incremental.accumulate_pool(store, "n", None, [a["dataset_id"], b["dataset_id"]])
    assert pool["n_rows"] == 8
    windowed = incremental.accumulate_pool(store, "n", None, [a["dataset_id"], b["dataset_id"]], window=3)
    prompts = store.get_rows(windowed["dataset_id"]).column("prompt").to_pylist()
    assert prompts == ["row question 5", "row question 6", "row question 7"]


def test_sinkhorn_divergence_is_zero_on_itself_and_grows_with_distance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    shifted = x + 0.8 * np.eye(8)[0]
    shifted /= np.linalg.norm(shifted, axis=1, keepdims=True)
    assert abs(incremental.sinkhorn_divergence(x, x, 0.05)) < 1e-3
    assert incremental.sinkhorn_divergence(x, shifted, 0.05) > 0.05


def pot_divergence(x: np.ndarray, y: np.ndarray, eps: float) -> float:
    """S(x, y) = OT(x, y) - (OT(x, x) + OT(y, y)) / 2 between uniform clouds, cosine cost, by POT."""
    from ot_reference import pot_ot

    def ot(p, q):
        cost = np.clip(1.0 - p.astype(np.float64) @ q.astype(np.float64).T, 0.0, 2.0)
        return pot_ot(np.full(len(p), 1 / len(p)), np.full(len(q), 1 / len(q)), cost, eps)[1]
    return ot(x, y) - 0.5 * (ot(x, x) + ot(y, y))


@pytest.fixture
def nightly_env(tmp_path, prefect_backend):
    return tmp_path / "home", tmp_path / "incoming", tmp_path / "out"


def run(home, incoming, out):
    from sot_prefect.flows.nightly import nightly_recuration

    return nightly_recuration(incoming=str(incoming), home=str(home), out_dir=str(out), encoder="testhash",
                              name="nightly-test")


def test_nightly_flow_embeds_only_new_rows_and_noops_when_quiet(nightly_env):
    home, incoming, out = nightly_env
    with pytest.raises(InputError, match="does not exist"):  # issue 16: a missing folder fails the run
        run(home, incoming, out)
    incoming.mkdir()
    (incoming / "day0.empty").touch()  # an explicitly empty day
    assert run(home, incoming, out)["status"] == "no-op"
    write_rows(incoming / "day1.jsonl", 0, 40)
    first = run(home, incoming, out)
    assert first["status"] == "published" and first["batch"] == 1
    assert first["counts"]["embedded_now"] == {"pool": 40, "safe_anchor": 50, "harmful_ref": 272}
    write_rows(incoming / "day2.jsonl", 40, 4)
    second = run(home, incoming, out)
    assert second["counts"]["embedded_now"] == {"pool": 4, "safe_anchor": 0, "harmful_ref": 0}
    assert second["counts"]["pool"] == 44 and second["parent_version"] == first["version"]
    # the kept rows of both nights come back as the incoming files held them
    curated, records = (read_jsonl(out / f) for f in ("curated.jsonl", "curated_records.jsonl"))
    assert [(r.pop("sot_id"), r.pop("sot_weight")) for r in records] == [(c["id"], c["weight"]) for c in curated]
    written = {f"row question {i}": {"prompt": f"row question {i}", "response": f"answer {i}"} for i in range(44)}
    assert len(records) == len(curated) > 0 and records == [written[c["prompt"]] for c in curated]
    assert run(home, incoming, out)["status"] == "no-op"
    store = Store(home)
    history = incremental.drift_history(store, "nightly-test")
    assert [h["rows"] for h in history] == [40, 4]
    # the drift figures: each batch's Sinkhorn divergence to the anchor and to the harmful reference,
    # recomputed from the stored embeddings with POT (tests/ot_reference.py) at the flow's eps
    [(encoder_id,)] = store.query("SELECT encoder_id FROM encoders")
    refs = dict(store.query("SELECT name, dataset_id FROM datasets WHERE name IN ('safe_anchor', 'harmful_ref')"))
    batches = store.query("SELECT dataset_id FROM incoming_batches WHERE name = 'nightly-test' ORDER BY seq")
    for h, (batch_id,) in zip(history, batches, strict=True):
        x = load_embeddings(store, batch_id, encoder_id)
        for key, role in (("drift_to_anchor", "safe_anchor"), ("drift_to_harmful", "harmful_ref")):
            y = load_embeddings(store, refs[role], encoder_id)
            assert h[key] == pytest.approx(pot_divergence(x, y, CurateConfig().eps), abs=1e-4), (h["batch"], key)
    versions = store.query("SELECT version, n_pool FROM curated_versions WHERE name = 'nightly-test' ORDER BY created_at")
    assert [v[1] for v in versions] == [40, 44]
    assert (out / "curation.png").stat().st_size > 1000
    assert DEMO.exists()


@pytest.mark.slow
def test_nightly_with_refusal_anchor_keeps_refusals_weighted_up(tmp_path, prefect_backend):
    """The nightly flow takes the same refusal anchor as `sot curate` (real MiniLM): refusals that
    arrive with the day's data get more weight than without it, and run.json lists the input."""
    import pyarrow.parquet as pq

    from sot_prefect.flows.nightly import nightly_recuration

    benign, _, refusals = refusal_rows()
    (tmp_path / "incoming").mkdir()
    write_jsonl(benign[:40] + refusals[:8], tmp_path / "incoming" / "day1.jsonl")
    write_jsonl(refusals[8:], tmp_path / "refusals.jsonl")
    mean_weight = {}
    for tag, extra in (("plain", {}), ("composite", {"refusal_anchor": str(tmp_path / "refusals.jsonl"),
                                                     "refusal_share": 0.5})):
        res = nightly_recuration(incoming=str(tmp_path / "incoming"), home=str(tmp_path / "home"),
                                 out_dir=str(tmp_path / tag), name=f"nightly-{tag}", **extra)
        assert res["status"] == "published"
        table = pq.read_table(tmp_path / tag / "weights.parquet").to_pydict()
        w = dict(zip(table["id"], table["weight"]))
        mean_weight[tag] = np.mean([w[r["id"]] for r in refusals[:8]])
    info = json.loads((tmp_path / "composite" / "run.json").read_text())
    assert info["inputs"]["refusal_anchor"]["n_rows"] == len(refusals) - 8
    assert info["config"]["refusal_share"] == 0.5
    assert mean_weight["composite"] > 1.5 * mean_weight["plain"]


def test_missing_or_empty_incoming_fails_and_an_explicit_empty_day_is_a_noop(tmp_path):
    """Issue 16: a missing folder (unmounted volume, wrong path) or one without any data file passed
    as a quiet night; an empty data file is bad input; only a ``*.empty`` marker declares an empty day."""
    store, incoming = Store(tmp_path / "home"), tmp_path / "incoming"
    with pytest.raises(InputError, match="does not exist"):
        incremental.stage_batch(store, "n", str(incoming))
    incoming.mkdir()
    (incoming / "notes.txt").write_text("not data")
    with pytest.raises(InputError, match="holds no data file"):
        incremental.stage_batch(store, "n", str(incoming))
    (incoming / "day1.jsonl").write_text("")
    with pytest.raises(InputError, match="day1.jsonl: the file is empty"):
        incremental.stage_batch(store, "n", str(incoming))
    (incoming / "day1.jsonl").unlink()
    (incoming / "2026-12-01.empty").touch()
    quiet = incremental.stage_batch(store, "n", str(incoming))
    assert quiet["n_new"] == 0 and quiet["files"] == {}
    # Once files were consumed, a night without new ones is a no-op (the marker is not needed).
    write_rows(incoming / "day2.jsonl", 0, 3)
    (incoming / "2026-12-01.empty").unlink()
    day2 = incremental.stage_batch(store, "n", str(incoming))
    incremental.commit_batch(store, day2, day2["dataset_id"], "v1", 3, None)
    assert incremental.stage_batch(store, "n", str(incoming))["n_new"] == 0


def test_rows_appended_to_a_consumed_file_are_counted_once(tmp_path):
    """Issue 16: 40 rows appended to a consumed 40-row file were counted as 80 new rows, and the
    drift was computed over all 80. Only the appended rows are new; re-sent rows are not."""
    store, incoming = Store(tmp_path / "home"), tmp_path / "incoming"
    write_rows(incoming / "day.jsonl", 0, 40)
    first = incremental.stage_batch(store, "n", str(incoming))
    incremental.commit_batch(store, first, first["dataset_id"], "v1", 40, None)
    with open(incoming / "day.jsonl", "a") as f:  # the producer appends to the same file
        f.write("".join(json.dumps({"prompt": f"row question {i}", "response": f"answer {i}"}) + "\n"
                        for i in range(40, 80)))
    second = incremental.stage_batch(store, "n", str(incoming))
    assert second["n_new"] == 40 and second["n_read"] == 80 and list(second["files"]) == ["day.jsonl"]
    batch = store.get_rows(second["dataset_id"]).column("prompt").to_pylist()
    assert batch == [f"row question {i}" for i in range(40, 80)]
    incremental.commit_batch(store, second, second["dataset_id"], "v2", 40, None)
    # A new file re-sending 5 old rows and 2 new ones: 2 new.
    write_rows(incoming / "resend.jsonl", 75, 7)
    assert incremental.stage_batch(store, "n", str(incoming))["n_new"] == 2


def test_nightly_drift_and_versions_cover_only_new_rows_and_link_the_base_version(nightly_env):
    """Issue 16: the drift of a night is computed over its new rows only (appended rows), and each
    nightly version names the curated version of its base pool (run.json and the catalog)."""
    from sot_prefect.flows.curate import curate_dataset
    from sot_prefect.flows.nightly import nightly_recuration

    home, incoming, out = nightly_env
    base = tmp = incoming.parent / "base.jsonl"
    write_rows(tmp, 0, 30, tag="base")
    curated = curate_dataset(pool=str(base), out_dir=str(out.parent / "curated"), home=str(home), encoder="testhash",
                             name="base-curation", labels=None)
    write_rows(incoming / "day.jsonl", 0, 10)

    def nightly():
        return nightly_recuration(incoming=str(incoming), base_pool=str(base), home=str(home), out_dir=str(out),
                                  encoder="testhash", name="nightly-base")

    first = nightly()
    with open(incoming / "day.jsonl", "a") as f:
        f.write("".join(json.dumps({"prompt": f"row question {i}", "response": f"answer {i}"}) + "\n"
                        for i in range(10, 16)))
    second = nightly()
    assert second["n_new"] == 6 and second["drift"]["n_batch"] == 6
    assert second["counts"]["pool"] == 30 + 16
    for res in (first, second):
        assert res["inputs"]["pool"]["base_version"] == curated["version"]
    info = json.loads((out / "run.json").read_text())
    assert info["inputs"]["pool"]["base_version"] == curated["version"]
    rows = Store(home).query("SELECT seq, n_rows, base_version FROM incoming_batches WHERE name = 'nightly-base' "
                             "ORDER BY seq")
    assert rows == [(1, 10, curated["version"]), (2, 6, curated["version"])]
