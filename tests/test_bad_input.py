"""Malformed input: one clear line naming file, row and field (or the option); store untouched.

Two levels. `CASES` and `CLI_CASES` run `sot curate` end to end (a Prefect flow per case, about
1.5 s each). `PIPELINE_CASES` run the flow's first stage, `ingest_inputs` (validate every input
and the encoder, then store), without Prefect: that stage is where bad input must stop, and a
case there costs a quarter of a second. Labels files, names and store ids are checked where the
library reads them. Every case compares the store before and after (`test_curate.snapshot`).
"""
from __future__ import annotations

import gzip
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DEMO
from sot_prefect.flows.cli import main
from sot_core.embed.encoders import MiniLMEncoder
from sot_core.data.schema import content_hash
from sot_core.errors import InputError, SotError
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
    # issue "Hardening" 12: the encoding is named, not "broken JSON at row 1"
    "utf16_file": ("pool.jsonl", "\ufeff".encode("utf-16-le") + GOOD.encode("utf-16-le"), "pool",
                   ["UTF-16", "UTF-8"]),
    # 9: no assistant turn is not an empty response; 12: unknown roles are named
    "chat_without_assistant": ("pool.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n', "pool",
                               ["row 1", "field 'messages'", "no assistant turn", "user"]),
    "chat_unknown_roles": ("pool.jsonl", b'{"messages": [{"role": "customer", "content": "hi"}, '
                           b'{"role": "agent", "content": "hello"}]}\n', "pool",
                           ["row 1", "field 'messages'", "customer", "agent"]),
    # 9: a response field that is null in every row
    "response_null_every_row": ("pool.jsonl", b'{"prompt": "a", "response": null}\n{"prompt": "b", "response": null}\n',
                                "pool", ["row 1", "field 'response'", "every row"]),
    "bad_refusal_anchor": ("refusals.jsonl", b'{"prompt": "a", "response": "b"}\n{"prompt": "c", \n', "refusal_anchor",
                           ["row 2", "JSON"]),
}


def make_populated_store(home: Path) -> Store:
    """A store holding a dataset and vectors already, so we can see nothing is lost."""
    store = Store(home)
    rows = make_rows(["kept 1", "kept 2"])
    store.put_dataset("ds-prior", rows, "pool", "earlier run")
    store.put_embeddings(MiniLMEncoder().encoder_id, rows.column("content_hash").to_pylist(),
                         np.eye(2, 384, dtype=np.float32))
    return store


@pytest.fixture
def populated_store(tmp_path):
    return make_populated_store(tmp_path / "home")


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One populated store and its snapshot for the fast cases: each case must leave it as it was,
    so every case compares against the same snapshot."""
    store = make_populated_store(tmp_path_factory.mktemp("shared") / "home")
    return store, snapshot(store.home)


def run_cli(home, out, *extra, **paths):
    args = ["curate", "--home", str(home), "--out", str(out)]
    for role in ("pool", "safe_anchor", "harmful_ref"):
        args += [f"--{role.replace('_', '-')}", str(paths.get(role, DEMO / {"pool": "pool.jsonl",
                 "safe_anchor": "safe_anchor.jsonl", "harmful_ref": "harmful_ref.jsonl"}[role]))]
    if "refusal_anchor" in paths:
        args += ["--refusal-anchor", str(paths["refusal_anchor"])]
    try:
        return main(args + list(extra))
    except SystemExit as stop:  # argparse refuses a bad option value before any work
        return stop.code


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


# --------------------------------------------------------------------------- options, end to end
# name -> (extra arguments given tmp_path, pieces the last error line must contain)
CLI_CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    # 6: a name that climbs out of the store (rejected by the option's pattern, and in the library)
    "name_climbs_out_of_the_store": (lambda tmp: ["--name", "../../escaped"], ["--name", "../../escaped"]),
    "name_with_a_separator": (lambda tmp: ["--name", "a/b"], ["--name", "a/b"]),
    # 10: the encoder is named in one line, not a raw OSError
    "encoder_missing_local_model": (lambda tmp: ["--encoder", "hf:/no/such/model"],
                                    ["--encoder", "hf:/no/such/model", "no such"]),
    "encoder_missing_hub_model": (lambda tmp: ["--encoder", "hf:sot-test-org/missing"],
                                  ["--encoder", "hf:sot-test-org/missing", "cache"]),
    "field_not_in_rows": (lambda tmp: ["--prompt-field", "question"], ["field 'question'", "not found"]),
    # a labels file is checked with the inputs, before anything is stored
    "labels_without_label_column": (lambda tmp: ["--labels", str(_write_text(tmp / "labels.csv", "id,flag\nx,1\n"))],
                                    ["labels.csv", "row 1", "field 'label'"]),
}


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_option_fails_clearly_and_leaves_store_unchanged(case, populated_store, tmp_path, capsys,
                                                             prefect_backend):
    extra, expected = CLI_CASES[case]
    before = snapshot(populated_store.home)
    assert run_cli(populated_store.home, tmp_path / "out", *extra(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: " in err and len(err) < 600
    for piece in expected:
        assert piece in err, f"{piece!r} not in {err!r}"
    assert snapshot(populated_store.home) == before
    assert not (tmp_path / "out" / "weights.parquet").exists()
    assert not list(tmp_path.rglob("escaped*"))  # home/curated/../../escaped-<time> would land here


def test_deployment_name_parameter_cannot_leave_the_store(populated_store, tmp_path, prefect_backend):
    """The flow's `name` parameter (the deployment's run form) is checked like `--name`."""
    from sot_prefect.flows.curate import curate_dataset

    before = snapshot(populated_store.home)
    with pytest.raises((SotError, ValueError), match="name"):
        curate_dataset(pool=str(DEMO / "pool.jsonl"), safe_anchor=str(DEMO / "safe_anchor.jsonl"),
                       harmful_ref=str(DEMO / "harmful_ref.jsonl"), out_dir=str(tmp_path / "out"),
                       name="../../escaped", home=str(populated_store.home))
    assert snapshot(populated_store.home) == before and not list(tmp_path.rglob("escaped*"))


# --------------------------------------------------------------------------- the ingest stage, per case
def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def raw(name: str, data: bytes):
    return lambda tmp: _write(tmp / name, data)


def text(name: str, content: str, encoding: str = "utf-8"):
    return raw(name, content.encode(encoding))


def jsonl(name: str, *records):
    return text(name, "".join(json.dumps(r) + "\n" for r in records))


def parquet(name: str, columns: dict):
    def make(tmp):
        pq.write_table(pa.table(columns), tmp / name)
        return tmp / name
    return make


def hf_folder(name: str, records: list[dict] | None = None, split: str | None = None):
    """A `save_to_disk` folder: a Dataset, or a DatasetDict with one `split`."""
    def make(tmp):
        import datasets

        dataset = datasets.Dataset.from_list(records)
        (datasets.DatasetDict({split: dataset}) if split else dataset).save_to_disk(str(tmp / name))
        return tmp / name
    return make


def folder(name: str, files: dict[str, bytes] | None = None):
    def make(tmp):
        (tmp / name).mkdir()
        for rel, data in (files or {}).items():
            _write(tmp / name / rel, data)
        return tmp / name
    return make


def symlink(name: str, target: str):
    def make(tmp):
        (tmp / name).symlink_to(target)
        return tmp / name
    return make


OK = {"prompt": "a", "response": "b"}
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
HUGE = "x" * 4_000_000


@dataclass
class Case:
    make: Callable[[Path], Path | str]
    expect: list[str]
    role: str = "pool"
    fields: dict | None = None
    encoder: str = "minilm"
    names_file: bool = True  # the message names the file (not for option errors)


def case(make, *expect, **kwargs) -> Case:
    return Case(make, list(expect), **kwargs)


PIPELINE_CASES: dict[str, Case] = {
    # JSONL rows and fields
    "jsonl_whitespace_only": case(raw("pool.jsonl", b"  \n\n \t\n"), "empty"),
    "jsonl_row_is_a_list": case(text("pool.jsonl", GOOD + "[1, 2]\n"), "row 2", "expected an object", "a list"),
    "jsonl_row_is_text": case(text("pool.jsonl", '"just text"\n'), "row 1", "expected an object", "text"),
    "jsonl_row_is_null": case(text("pool.jsonl", GOOD + "null\n"), "row 2", "expected an object", "null"),
    "jsonl_null_prompt": case(jsonl("pool.jsonl", OK, {"prompt": None, "response": "r"}),
                              "row 2", "field 'prompt'", "missing"),
    "jsonl_number_prompt": case(jsonl("pool.jsonl", {"prompt": 5, "response": "r"}),
                                "row 1", "field 'prompt'", "a number"),
    "jsonl_object_prompt": case(jsonl("pool.jsonl", OK, {"prompt": {"text": "a"}, "response": "r"}),
                                "row 2", "field 'prompt'", "an object"),
    "jsonl_boolean_response": case(jsonl("pool.jsonl", {"prompt": "a", "response": True}),
                                   "row 1", "field 'response'", "a boolean"),
    "jsonl_whitespace_prompt": case(jsonl("pool.jsonl", OK, {"prompt": " \n\t", "response": "r"}),
                                    "row 2", "field 'prompt'", "empty"),
    "jsonl_extra_field_differing_in_case": case(jsonl("pool.jsonl", {**OK, "Prompt": "b"}),
                                                "row 1", "field 'Prompt'", "only in case"),
    "jsonl_no_known_fields": case(jsonl("pool.jsonl", {"foo": "a", "bar": "b"}), "cannot tell", "bar, foo"),
    "jsonl_response_empty_every_row": case(jsonl("pool.jsonl", {"prompt": "a", "response": ""},
                                                 {"prompt": "b", "response": "  "}),
                                           "row 1", "field 'response'", "every row"),
    "jsonl_response_null_every_row": case(jsonl("pool.jsonl", {"prompt": "a", "response": None},
                                                {"prompt": "b", "response": None}),
                                          "row 1", "field 'response'", "every row"),
    "jsonl_pool_without_responses": case(jsonl("pool.jsonl", {"prompt": "a", "intent": "x"}),
                                         "no row has a response", "pool needs"),
    "jsonl_null_id": case(jsonl("pool.jsonl", {"id": "a", **OK}, {"id": None, **OK}), "row 2", "field 'id'", "missing"),
    "jsonl_empty_id": case(jsonl("pool.jsonl", {"id": " ", **OK}), "row 1", "field 'id'", "empty"),
    "jsonl_object_id": case(jsonl("pool.jsonl", {"id": {"n": 1}, **OK}), "row 1", "field 'id'", "an object"),
    "jsonl_duplicate_numeric_ids": case(jsonl("pool.jsonl", {"id": 7, **OK}, {"id": 7.0, "prompt": "c", "response": "d"}),
                                        "row 2", "field 'id'", "duplicate id '7'"),
    # encodings and bytes
    "jsonl_latin1": case(text("pool.jsonl", '{"prompt": "café", "response": "b"}\n', "latin-1"),
                         "row 1", "field 'prompt'", "UTF-8", "Latin-1"),
    "jsonl_non_utf8_field_name": case(raw("pool.jsonl", b'{"prompt": "a", "response": "b", "caf\xe9": 1}\n'),
                                      "row 1", "UTF-8"),
    "jsonl_utf16_le_bom": case(text("pool.jsonl", "\ufeff" + GOOD, "utf-16-le"), "UTF-16", "re-save"),
    "jsonl_utf16_be_bom": case(text("pool.jsonl", "\ufeff" + GOOD, "utf-16-be"), "UTF-16"),
    "jsonl_utf16_without_bom": case(text("pool.jsonl", GOOD * 3, "utf-16-le"), "UTF-16"),
    "jsonl_utf32_bom": case(text("pool.jsonl", "\ufeff" + GOOD, "utf-32-le"), "UTF-32"),
    "jsonl_binary_bytes": case(raw("pool.jsonl", bytes(range(256)) * 4), "binary"),
    "jsonl_gzip_truncated": case(raw("pool.jsonl.gz", gzip.compress(GOOD.encode() * 50)[:40]), "cannot read"),
    # huge lines: the message stays one short line and the row count is right
    "jsonl_huge_broken_line": case(text("pool.jsonl", '{"prompt": "' + HUGE + '\n'), "row 1", "broken JSON"),
    "jsonl_huge_line_then_missing_field": case(jsonl("pool.jsonl", {"prompt": HUGE, "response": "b"}, {"prompt": "c"}),
                                               "row 2", "field 'response'"),
    # chats
    "chat_without_assistant_turn": case(jsonl("pool.jsonl", {"messages": CHAT}, {"messages": CHAT[:1]}),
                                        "row 2", "field 'messages'", "no assistant turn", "roles: user"),
    "chat_unknown_roles": case(jsonl("pool.jsonl", {"messages": [{"role": "customer", "content": "hi"},
                                                                 {"role": "agent", "content": "yes"}]}),
                               "row 1", "field 'messages'", "customer, agent"),
    "chat_without_user_turn": case(jsonl("pool.jsonl", {"messages": [{"role": "system", "content": "be nice"},
                                                                     {"role": "assistant", "content": "ok"}]}),
                                   "row 1", "field 'messages'", "no user turn", "system, assistant"),
    "chat_not_a_list": case(jsonl("pool.jsonl", {"messages": CHAT}, {"messages": "hi"}),
                            "row 2", "field 'messages'", "chat turns", "text"),
    "chat_content_not_text": case(jsonl("pool.jsonl", {"messages": [{"role": "user", "content": 5}, CHAT[1]]}),
                                  "row 1", "field 'messages[0].content'", "expected text"),
    "chat_missing_in_a_row": case(jsonl("pool.jsonl", {"messages": CHAT}, {"other": 1}),
                                  "row 2", "field 'messages'", "missing"),
    "chat_turn_without_role": case(jsonl("pool.jsonl", {"messages": CHAT}, {"messages": [{"content": "hi"}]}),
                                   "row 2", "field 'messages'", "role"),
    # JSON
    "json_broken": case(text("pool.json", '[{"prompt": "a", "response": "b"},'), "broken JSON", "line 1"),
    "json_a_number": case(text("pool.json", "42"), "expected a JSON list", "a number"),
    "json_object_without_rows": case(text("pool.json", '{"version": 1}'), "no list of rows"),
    "json_column_lists_unequal": case(text("pool.json", '{"prompts": ["a", "b"], "responses": ["c"]}'),
                                      "field 'responses'", "1 items"),
    "json_list_of_strings": case(text("pool.json", '["a", "b"]'), "row 1", "expected an object"),
    "json_null_item": case(text("pool.json", json.dumps([OK, None])), "row 2", "null"),
    "json_empty_list": case(text("pool.json", "[]"), "no rows"),
    "json_utf16": case(text("pool.json", "\ufeff" + json.dumps([OK]), "utf-16-le"), "UTF-16"),
    # CSV / TSV
    "csv_long_row": case(text("pool.csv", "prompt,response\na,b\nc,d,e\n"), "row 2", "3 values"),
    "csv_header_only": case(text("pool.csv", "prompt,response\n"), "no rows"),
    "csv_unterminated_quote": case(text("pool.csv", 'prompt,response\na,b\n"c,d\n'), "row 2", "malformed CSV"),
    "csv_header_names_a_column_twice": case(text("pool.csv", "prompt,Prompt,response\na,b,c\n"),
                                            "field 'Prompt'", "twice"),
    "csv_header_repeated_inside": case(text("pool.csv", "prompt,response\na,b\nprompt,response\n"),
                                       "row 2", "header appears again"),
    "csv_empty_prompt_cell": case(text("pool.csv", "prompt,response\na,b\n,d\n"), "row 2", "field 'prompt'", "empty"),
    "csv_unknown_columns": case(text("pool.csv", "col_a,col_b\na,b\n"), "cannot tell", "col_a"),
    "csv_response_blank_every_row": case(text("pool.csv", "prompt,response\na,\nb,\n"),
                                         "row 1", "field 'response'", "every row"),
    "csv_latin1": case(text("pool.csv", "prompt,response\nfiancé,b\n", "cp1252"), "row 1", "field 'prompt'", "UTF-8"),
    "tsv_excel_unicode_text": case(text("pool.tsv", "\ufeffprompt\tresponse\na\tb\n", "utf-16-le"), "UTF-16"),
    # Parquet
    "parquet_not_parquet": case(text("pool.parquet", "not parquet at all"), "Parquet"),
    "parquet_null_response": case(parquet("pool.parquet", {"prompt": ["a", "b"], "response": ["r", None]}),
                                  "row 2", "field 'response'", "missing"),
    "parquet_integer_prompt": case(parquet("pool.parquet", {"prompt": [1, 2], "response": ["r", "s"]}),
                                   "row 1", "field 'prompt'", "a number"),
    "parquet_list_response": case(parquet("pool.parquet", {"prompt": ["a"], "response": [["r"]]}),
                                  "row 1", "field 'response'", "a list"),
    "parquet_zero_rows": case(parquet("pool.parquet", {"prompt": pa.array([], pa.string()),
                                                       "response": pa.array([], pa.string())}), "no rows"),
    "parquet_unknown_columns": case(parquet("pool.parquet", {"x": ["a"], "y": ["b"]}), "cannot tell", "x, y"),
    # Hugging Face folders and folders given as files
    "hf_missing_split": case(hf_folder("pool_ds", [OK], split="test"), "no split 'train'", "test"),
    "hf_bad_row": case(hf_folder("pool_ds", [OK, {"prompt": "", "response": "r"}]), "row 2", "field 'prompt'", "empty"),
    "hf_empty_folder": case(folder("pool_ds"), "folder", "no data files"),
    "hf_broken_state": case(folder("pool_ds", {"state.json": b"{", "dataset_info.json": b"{}"}), "cannot load"),
    "folder_named_like_a_file": case(folder("pool.jsonl"), "folder", "no data files"),
    # paths
    "missing_file": case(lambda tmp: tmp / "nope.jsonl", "no such file"),
    "missing_folder_on_the_way": case(lambda tmp: tmp / "nowhere" / "pool.jsonl", "no such file"),
    "dangling_symlink": case(symlink("pool.jsonl", "/nonexistent/pool.jsonl"), "no such file"),
    "unreadable_file": case(symlink("pool.jsonl", "/proc/self/mem"), "cannot read"),
    "unknown_suffix": case(text("pool.txt", GOOD), "unknown file format"),
    # the other inputs
    "anchor_missing_response_field": case(jsonl("anchor.jsonl", OK, {"prompt": "c"}), "row 2", "field 'response'",
                                          role="safe_anchor"),
    "harmful_ref_broken_json": case(text("harmful.jsonl", GOOD + "{\n"), "row 2", "broken JSON", role="harmful_ref"),
    "harmful_ref_utf16": case(text("harmful.jsonl", "\ufeff" + GOOD, "utf-16-le"), "UTF-16", role="harmful_ref"),
    "refusal_anchor_missing": case(lambda tmp: tmp / "refusals.jsonl", "no such file", role="refusal_anchor"),
    "refusal_anchor_empty": case(raw("refusals.jsonl", b""), "empty", role="refusal_anchor"),
    "refusal_anchor_without_responses": case(jsonl("refusals.jsonl", {"prompt": "how do I pick a lock"}),
                                             "no row has a response", "refusal anchor needs", role="refusal_anchor"),
    "refusal_anchor_wrong_type": case(jsonl("refusals.jsonl", OK, {"prompt": "a", "response": 3}),
                                      "row 2", "field 'response'", "a number", role="refusal_anchor"),
    # --*-field names
    "prompt_field_not_in_rows": case(jsonl("pool.jsonl", OK), "field 'question'", "not found",
                                     fields={"prompt": "question"}),
    "messages_field_is_text": case(jsonl("pool.jsonl", OK), "row 1", "field 'prompt'", "chat turns",
                                   fields={"messages": "prompt"}),
    "id_field_with_duplicates": case(jsonl("pool.jsonl", {"grp": "g", **OK}, {"grp": "g", **OK}),
                                     "row 2", "field 'grp'", "duplicate", fields={"id": "grp"}),
    "response_field_is_a_number": case(jsonl("pool.jsonl", {"prompt": "a", "score": 3}), "row 1", "field 'score'",
                                       "a number", fields={"response": "score"}),
    "messages_and_prompt_fields_both": case(jsonl("pool.jsonl", {**OK, "messages": CHAT}), "field 'messages'",
                                            "prompt", fields={"messages": "messages", "prompt": "prompt"}),
    # --encoder (10): named in the message, nothing stored
    "encoder_missing_local_model": case(jsonl("pool.jsonl", OK), "--encoder", "hf:/no/such/model", "no such",
                                        encoder="hf:/no/such/model", names_file=False),
    "encoder_relative_missing_model": case(jsonl("pool.jsonl", OK), "--encoder", "hf:./models/none",
                                           encoder="hf:./models/none", names_file=False),
    "encoder_folder_not_a_model": case(jsonl("pool.jsonl", OK), "--encoder", "config.json",
                                       encoder="hf:.", names_file=False),
    "encoder_missing_hub_model": case(jsonl("pool.jsonl", OK), "--encoder", "hf:sot-test-org/missing", "cache",
                                      encoder="hf:sot-test-org/missing", names_file=False),
    "encoder_unknown_name": case(jsonl("pool.jsonl", OK), "--encoder", "nosuch", encoder="nosuch", names_file=False),
    "encoder_unknown_view": case(jsonl("pool.jsonl", OK), "--encoder", "sideways", encoder="minilm:sideways",
                                 names_file=False),
}


def ingest_rejects(store: Store, before, tmp_path: Path, c: Case) -> tuple[str, str]:
    """Run the flow's ingest stage with one input replaced; it must fail and change nothing."""
    from sot_prefect.tasks.curation import ingest_inputs

    source = c.make(tmp_path)
    sources = {"pool": str(DEMO / "pool.jsonl"), "safe_anchor": str(DEMO / "safe_anchor.jsonl"),
               "harmful_ref": str(DEMO / "harmful_ref.jsonl"), c.role: str(source)}
    with pytest.raises(InputError) as caught:
        ingest_inputs.fn(str(store.home), sources, c.encoder, c.fields)
    assert snapshot(store.home) == before
    return str(caught.value), str(source)


@pytest.mark.parametrize("name", sorted(PIPELINE_CASES))
def test_malformed_input_is_rejected_before_anything_is_stored(name, shared_store, tmp_path, monkeypatch):
    c = PIPELINE_CASES[name]
    monkeypatch.chdir(tmp_path)  # relative model paths resolve under tmp_path
    message, source = ingest_rejects(*shared_store, tmp_path, c)
    assert "\n" not in message and len(message) < 600, message
    if c.names_file:
        assert message.startswith(source), message
    for piece in c.expect:
        assert piece in message, f"{piece!r} not in {message!r}"


# --------------------------------------------------------------------------- labels files
LABEL_CASES = {
    "missing": (None, ["no such file"]),
    "empty": ("", ["empty"]),
    "header_only": ("id,label\n", ["no rows"]),
    "no_label_column": ("id,flag\nx,1\n", ["row 1", "field 'label'", "missing"]),
    "no_id_column": ("label\n1\n", ["row 1", "field 'id'", "missing"]),
    "empty_id": ("id,label\n,1\n", ["row 1", "field 'id'", "empty"]),
    "duplicate_id": ("id,label\nx,1\nx,0\n", ["row 2", "field 'id'", "duplicate"]),
    "unterminated_quote": ('id,label\nx,1\n"y,0\n', ["row 2", "malformed CSV"]),
    "utf16": ("\ufeffid,label\nx,1\n", ["UTF-16"]),
}


@pytest.mark.parametrize("name", sorted(LABEL_CASES))
def test_bad_labels_file_is_rejected_before_anything_is_stored(name, shared_store, tmp_path):
    from sot_core.curate.pipeline import load_inputs

    content, expected = LABEL_CASES[name]
    path = tmp_path / "labels.csv"
    if content is not None:
        path.write_bytes(content.encode("utf-16-le" if name == "utf16" else "utf-8"))
    sources = {"pool": str(DEMO / "pool.jsonl"), "safe_anchor": str(DEMO / "safe_anchor.jsonl"),
               "harmful_ref": str(DEMO / "harmful_ref.jsonl")}
    store, before = shared_store
    with pytest.raises(InputError) as caught:
        load_inputs(sources, labels=str(path))
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    for piece in expected:
        assert piece in message, f"{piece!r} not in {message!r}"
    assert snapshot(store.home) == before


# --------------------------------------------------------------------------- names in the library (6)
BAD_NAMES = ["../../escaped", "a/b", "..", ".", "", ".hidden", "x" * 65, "a\\b", "name\n", "/abs"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_publish_refuses_a_name_that_is_not_a_plain_folder_name(bad, shared_store, tmp_path):
    from sot_core.config import CurateConfig
    from sot_core.curate.select import publish

    solve = tmp_path / "solve"
    solve.mkdir()
    np.save(solve / "weights.npy", np.array([0.6, 0.4]))
    np.save(solve / "score.npy", np.array([0.1, 0.2]))
    store, before = shared_store
    with pytest.raises(InputError, match="name"):
        publish(store, "ds-prior", str(solve), CurateConfig(), tmp_path / "out", {}, name=bad)
    assert snapshot(store.home) == before
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("escaped*"))


@pytest.mark.parametrize("bad", ["../x", "..", "", "a/b", ".x"])
def test_store_paths_refuse_ids_that_are_not_plain_names(bad, shared_store):
    from sot_core.data.store import slug
    from sot_core.errors import StoreError

    store = shared_store[0]
    for make_path in (store.dataset_path, lambda v: store.stage_dir("costs", v), lambda v: store.stage_dir(v, "key"),
                      store.curated_dir):
        with pytest.raises(StoreError):
            make_path(bad)
    if bad in ("..", "", ".x"):  # slug maps separators to "_" but never to a dot or empty name
        with pytest.raises(StoreError):
            slug(bad)


def test_nightly_watermark_name_is_checked(shared_store, tmp_path):
    from sot_core.curate import incremental

    store, before = shared_store
    with pytest.raises(InputError, match="name"):
        incremental.stage_batch(store, "../../escaped", str(tmp_path))
    assert snapshot(store.home) == before


# --------------------------------------------------------------------------- encoders offline (10)
def test_encoder_errors_try_no_network_for_local_paths(tmp_path, monkeypatch):
    """A local-looking model path fails at once, naming --encoder, without a connection attempt."""
    from sot_core.embed.encoders import get_encoder

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_model").mkdir()
    for spec in ("hf:/no/such/model", "hf:./no/such", "hf:../up/model", "hf:~/no/model", "hf:empty_model",
                 "hf:a/b/c", "hf:"):
        with pytest.raises(InputError) as caught:
            get_encoder(spec)
        assert "--encoder" in str(caught.value) and spec in str(caught.value), str(caught.value)
    assert attempts == []


def test_nightly_batch_without_responses_is_refused(shared_store, tmp_path):
    from sot_core.curate import incremental

    store, before = shared_store
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "batch.jsonl").write_text('{"prompt": "a"}\n')
    with pytest.raises(InputError, match="batch.jsonl: no row has a response"):
        incremental.stage_batch(store, "nightly", str(tmp_path / "incoming"))
    assert snapshot(store.home) == before
