"""Malformed input through `sot curate`: one clear line naming file, row and field; store untouched."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DEMO
from sot_prefect.flows.cli import main
from sot_core.embed.encoders import MiniLMEncoder
from sot_core.data.schema import content_hash
from test_curate import snapshot
from test_store import make_rows
from sot_core.data.store import Store

GOOD = '{"prompt": "a", "response": "b"}\n'

# name -> (file name, bytes, role it replaces, pieces the error must contain)
CASES = {
    "broken_json_line": ("pool.jsonl", (GOOD * 2 + '{"prompt": "x", "response": \n').encode(), "pool", ["row 3", "JSON"]),
    "missing_field": ("pool.jsonl", (GOOD + '{"prompt": "c"}\n').encode(), "pool", ["row 2", "field 'response'"]),
    "empty_file": ("pool.jsonl", b"", "pool", ["empty"]),
    "duplicate_ids": ("pool.jsonl", b'{"id": "a", "prompt": "a", "response": "b"}\n{"id": "b", "prompt": "c", "response": "d"}\n'
                      b'{"id": "a", "prompt": "e", "response": "f"}\n', "pool", ["row 3", "field 'id'", "duplicate"]),
    "non_utf8_bytes": ("pool.jsonl", GOOD.encode() + b'{"prompt": "c\xff\xfe", "response": "d"}\n', "pool",
                       ["row 2", "field 'prompt'", "UTF-8"]),
    "wrong_type": ("pool.jsonl", (GOOD + '{"prompt": "c", "response": [1, 2]}\n').encode(), "pool",
                   ["row 2", "field 'response'", "list"]),
    "empty_anchor": ("anchor.json", b"[]", "safe_anchor", ["anchor.json", "no rows"]),
    "unknown_format": ("pool.xyz", b"whatever", "pool", ["pool.xyz", "format"]),
    "unreadable_path": ("missing.jsonl", None, "harmful_ref", ["missing.jsonl", "no such file"]),
    "empty_prompt": ("pool.jsonl", b'{"prompt": "", "response": "b"}\n', "pool", ["row 1", "field 'prompt'"]),
    "csv_short_row": ("pool.csv", b"prompt,response\na,b\nc\n", "pool", ["row 2", "header names 2 columns"]),
}


@pytest.fixture
def populated_store(tmp_path):
    """A store holding a dataset and vectors already, so we can see nothing is lost."""
    store = Store(tmp_path / "home")
    rows = make_rows(["kept 1", "kept 2"])
    store.put_dataset("ds-prior", rows, "pool", "earlier run")
    store.put_embeddings(MiniLMEncoder().encoder_id, rows.column("content_hash").to_pylist(),
                         np.eye(2, 384, dtype=np.float32))
    return store


def run_cli(home, out, **paths):
    args = ["curate", "--home", str(home), "--out", str(out)]
    for role in ("pool", "safe_anchor", "harmful_ref"):
        args += [f"--{role.replace('_', '-')}", str(paths.get(role, DEMO / {"pool": "pool.jsonl",
                 "safe_anchor": "safe_anchor.jsonl", "harmful_ref": "harmful_ref.jsonl"}[role]))]
    return main(args)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_clearly_and_leaves_store_unchanged(case, populated_store, tmp_path, capsys, prefect_backend):
    name, payload, role, expected = CASES[case]
    path = tmp_path / name
    if payload is not None:
        path.write_bytes(payload)
    before = snapshot(populated_store.home)
    assert run_cli(populated_store.home, tmp_path / "out", **{role: path}) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sot: error: ") and name in err
    for piece in expected:
        assert piece in err, f"{piece!r} not in {err!r}"
    assert snapshot(populated_store.home) == before
    assert not (tmp_path / "out" / "weights.parquet").exists()


def test_encoder_dimension_clash_in_store(populated_store, tmp_path, capsys, prefect_backend):
    encoder_id = MiniLMEncoder().encoder_id
    store = Store(tmp_path / "other")
    store.put_embeddings(encoder_id, [content_hash("x", "y")], np.ones((1, 16), np.float32))
    before = snapshot(store.home)
    assert run_cli(store.home, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "catalog.duckdb" in err and f"row '{encoder_id}'" in err and "field 'dim'" in err
    assert snapshot(store.home) == before
