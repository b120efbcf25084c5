"""``curated_records.jsonl``: the kept rows handed back as the input held them.

`publish` is called directly on a real store with solver outputs chosen by the test (no Prefect,
no encoder); each expected line is rebuilt here from the records the test wrote.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import read_jsonl
from sot_core.config import CurateConfig
from sot_core.curate.incremental import accumulate_pool
from sot_core.curate.pipeline import ingest
from sot_core.curate.select import publish
from sot_core.data.loaders import load_rows
from sot_core.data.schema import ROW_SCHEMA, dataset_id_of, records_id_of
from sot_core.data.store import Store


def chat(i: int) -> dict:
    """A multi-turn chat with a system prompt and fields the canonical pair leaves out."""
    return {"ConversationID": f"conv-{i}", "Messages": [
        {"role": "system", "content": f"You are tutor {i}."},
        {"role": "user", "content": f"Question {i}?"},
        {"role": "assistant", "content": f"First answer {i}."},
        {"role": "user", "content": f"Follow-up {i}, café ✓"},
        {"role": "assistant", "content": f"Second answer {i}."}], "Meta": {"lang": "en", "turn_count": 5}}


def solve_outputs(tmp, n: int, seed: int = 3):
    """A solve folder with random weights; returns (folder, weights)."""
    weights = np.random.default_rng(seed).dirichlet(np.ones(n))
    folder = tmp / f"solve-{n}-{seed}"
    folder.mkdir(exist_ok=True)
    np.save(folder / "weights.npy", weights)
    np.save(folder / "score.npy", -np.log(weights))
    return folder, weights


def publish_pool(tmp, store, ingested: dict, n, out_name):
    """`publish` of an ingested pool, its ingest figures passed on as the flows pass them."""
    solve, _ = solve_outputs(tmp, n)
    return publish(store, ingested["dataset_id"], str(solve), CurateConfig(keep=0.5, harmful_recall=0.0),
                   tmp / out_name, {"inputs": {"pool": ingested}}, name=out_name)


def expected_lines(out, records_by_id):
    """What curated_records.jsonl must hold: each kept row's record plus sot_id and sot_weight, in
    the order (and with the weights) of curated.jsonl."""
    return [{**records_by_id[c["id"]], "sot_id": c["id"], "sot_weight": c["weight"]}
            for c in read_jsonl(out / "curated.jsonl")]


def test_chat_rows_come_back_with_every_turn_and_field(tmp_path):
    records = [chat(i) for i in range(12)]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    store = Store(tmp_path / "home")
    rows = load_rows(str(path))
    assert rows.column("prompt")[0].as_py() == "Question 0?\n\nFollow-up 0, café ✓"  # the canonical pair drops turns
    summary = publish_pool(tmp_path, store, ingest(store, str(path), rows, "pool"), len(records), "chats")
    out = tmp_path / "chats"
    by_id = {f"h-{h[:16]}": r for h, r in zip(rows.column("content_hash").to_pylist(), records)}
    lines = read_jsonl(out / "curated_records.jsonl")
    assert len(lines) == 6 and lines == expected_lines(out, by_id)
    assert lines[0]["Messages"][0] == {"role": "system", "content": lines[0]["Messages"][0]["content"]}
    assert "café ✓" in (out / "curated_records.jsonl").read_text(encoding="utf-8")  # UTF-8, not escapes
    assert summary["curated_records"] == {"file": "curated_records.jsonl", "kept_rows_without_record": 0}
    assert "`curated_records.jsonl`" in (out / "report.md").read_text()
    # the store's version holds the same file as the output folder
    stored = store.curated_dir(summary["version"]) / "curated_records.jsonl"
    assert stored.read_text(encoding="utf-8") == (out / "curated_records.jsonl").read_text(encoding="utf-8")


def test_bare_turn_lists_and_csv_rows_come_back_as_objects(tmp_path):
    turns = [[{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": f"Hello {i}"}] for i in range(10)]
    jsonl = tmp_path / "turns.jsonl"
    jsonl.write_text("".join(json.dumps(t) + "\n" for t in turns), encoding="utf-8")
    table = [{"Id": f"r{i}", "Question": f"Q{i}", "Answer": f"A{i}", "Split": "train"} for i in range(10)]
    csv_path = tmp_path / "qa.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    store = Store(tmp_path / "home")
    for path, expected, name in ((jsonl, [{"messages": t} for t in turns], "turns"), (csv_path, table, "qa")):
        rows = load_rows(str(path))
        publish_pool(tmp_path, store, ingest(store, str(path), rows, "pool"), len(expected), name)
        by_id = dict(zip(rows.column("id").to_pylist(), expected))
        lines = read_jsonl(tmp_path / name / "curated_records.jsonl")
        assert len(lines) == 5 and lines == expected_lines(tmp_path / name, by_id)


def test_rows_stored_without_records_give_no_file_and_say_why(tmp_path):
    """A pool ingested before records were kept: no half-canonical file, a stale one removed, and the
    report says how to get one."""
    store = Store(tmp_path / "home")
    rows = load_rows(str(_write_chats(tmp_path, 10)))
    ingested = ingest(store, "old", rows.select(ROW_SCHEMA.names), "pool")  # no record column
    assert ingested["records_id"] is None and ingested["dataset_id"] == dataset_id_of(rows)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "curated_records.jsonl").write_text("stale\n")
    summary = publish_pool(tmp_path, store, ingested, 10, "old")
    assert not (tmp_path / "old" / "curated_records.jsonl").exists()
    assert summary["curated_records"] == {"file": None, "kept_rows_without_record": 5}
    assert "curate the pool again" in (tmp_path / "old" / "report.md").read_text()
    assert len(read_jsonl(tmp_path / "old" / "curated.jsonl")) == 5  # the canonical file is unaffected


def test_records_the_store_lost_or_damaged_cost_the_file_not_the_run(tmp_path):
    store = Store(tmp_path / "home")
    rows = load_rows(str(_write_chats(tmp_path, 10)))
    ingested = ingest(store, "pool", rows, "pool")
    path = store.records_path(ingested["records_id"])
    path.write_bytes(path.read_bytes()[:40])  # truncated: unreadable
    assert publish_pool(tmp_path, store, ingested, 10, "damaged")["curated_records"]["file"] is None
    assert not path.exists()  # removed, so that the next ingest of the same rows writes it again
    assert ingest(store, "pool", rows, "pool")["records_id"] == ingested["records_id"] and path.exists()
    assert publish_pool(tmp_path, store, ingested, 10, "again")["curated_records"]["file"] == "curated_records.jsonl"


def test_records_are_kept_apart_from_the_dataset_id(tmp_path):
    """Files with the same texts but another field share their dataset (and every stage cached on it)
    and differ in their records; the reference inputs store no records."""
    store = Store(tmp_path / "home")
    base = [chat(i) for i in range(4)]
    other = [{**r, "Meta": {"lang": "de"}} for r in base]  # same texts, another field changed
    infos = []
    for name, records in (("a", base), ("b", other), ("c", base)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        rows = load_rows(str(path))
        infos.append(ingest(store, str(path), rows, "pool"))
        assert records_id_of(rows) == infos[-1]["records_id"]
    assert infos[0]["dataset_id"] == infos[1]["dataset_id"] == infos[2]["dataset_id"]
    assert infos[0]["records_id"] != infos[1]["records_id"] and infos[0]["records_id"] == infos[2]["records_id"]
    assert [json.loads(r) for r in store.get_records(infos[1]["records_id"]).column("record").to_pylist()] == other
    assert ingest(store, str(tmp_path / "a.jsonl"), load_rows(str(tmp_path / "a.jsonl")), "harmful_ref")["records_id"] is None


def test_the_nightly_pool_carries_the_records_of_every_part(tmp_path):
    """accumulate_pool joins stored parts; the accumulated pool keeps each row's record, a later
    row with the same id replaces the earlier one's, and a part without records gives nulls."""
    store = Store(tmp_path / "home")
    first = [chat(i) for i in range(4)]
    resent = [{**chat(2), "Meta": {"lang": "fr"}}] + [chat(i) for i in range(4, 6)]
    infos = []
    for name, records in (("base", first), ("batch", resent)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        infos.append(ingest(store, str(path), load_rows(str(path)), "incoming"))
    old = load_rows(str(_write_chats(tmp_path, 2, start=10))).select(ROW_SCHEMA.names)
    infos.append(ingest(store, "old", old, "incoming"))
    info = accumulate_pool(store, "nightly", infos[0]["dataset_id"], [i["dataset_id"] for i in infos[1:]],
                           base_records_id=infos[0]["records_id"], batch_records_ids=[i["records_id"] for i in infos[1:]])
    records = store.get_records(info["records_id"])
    assert records.column("id").to_pylist() == store.get_rows(info["dataset_id"]).column("id").to_pylist()
    got = [None if r is None else json.loads(r) for r in records.column("record").to_pylist()]
    assert got == [chat(0), chat(1), chat(3), resent[0], chat(4), chat(5), None, None]
    # a window keeps the records of the rows it keeps
    windowed = accumulate_pool(store, "nightly", infos[0]["dataset_id"], [infos[1]["dataset_id"]], window=3,
                               base_records_id=infos[0]["records_id"], batch_records_ids=[infos[1]["records_id"]])
    assert [json.loads(r) for r in store.get_records(windowed["records_id"]).column("record").to_pylist()] == resent


def _write_chats(tmp_path, n: int, start: int = 0):
    path = tmp_path / f"chats-{start}-{n}.jsonl"
    path.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(start, start + n)), encoding="utf-8")
    return path


@pytest.mark.parametrize("clash", ["sot_id", "sot_weight"])
def test_a_record_that_already_has_the_added_fields_gets_them_replaced(tmp_path, clash):
    """Curating a curated_records.jsonl again: the new id and weight replace the old ones."""
    records = [{"prompt": f"P{i}", "response": f"R{i}", clash: "old"} for i in range(10)]
    path = tmp_path / "again.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    store = Store(tmp_path / "home")
    rows = load_rows(str(path))
    publish_pool(tmp_path, store, ingest(store, str(path), rows, "pool"), 10, "again")
    by_id = dict(zip(rows.column("id").to_pylist(), records))
    lines = read_jsonl(tmp_path / "again" / "curated_records.jsonl")
    assert lines == expected_lines(tmp_path / "again", by_id) and all(line[clash] != "old" for line in lines)
