"""Tests for sot_core.data.loaders: formats, layout detection, ids, Alpaca unwrapping, input errors."""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import require_shared
from sot_core.data import hub as hub_module
from sot_core.data.loaders import FieldMap, load_labels, load_rows, unwrap_alpaca_template
from sot_core.errors import InputError
from sot_core.data.schema import ROW_SCHEMA, LOADED_SCHEMA, content_hash



# ---------------------------------------------------------------- writers, one per format
def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def write_csv(path: Path, records: list) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def write_parquet(path: Path, records: list) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_hf(path: Path, records: list) -> Path:
    import datasets

    datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


WRITERS = {"jsonl": (write_jsonl, ".jsonl"), "json": (write_json, ".json"), "csv": (write_csv, ".csv"),
           "parquet": (write_parquet, ".parquet"), "hf": (write_hf, "")}


def write(tmp_path: Path, fmt: str, records: list, stem: str = "data") -> Path:
    writer, suffix = WRITERS[fmt]
    return writer(tmp_path / f"{stem}{suffix}", records)


def pairs(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table.column("prompt").to_pylist(), table.column("response").to_pylist()))


# ---------------------------------------------------------------- layouts x formats
FLAT_LAYOUTS = {
    "prompt/response": ([{"prompt": " P1 ", "response": "R1\n"}, {"prompt": "P2", "response": ""}],
                        [("P1", "R1"), ("P2", "")]),
    "instruction/input/output": (
        [{"instruction": "Summarise.", "input": "Long text.", "output": "Short."},
         {"instruction": "Say hi.", "input": "", "output": "Hi."}],
        [("Summarise.\n\nLong text.", "Short."), ("Say hi.", "Hi.")]),
    "dolly instruction/context/response": (
        [{"instruction": "Who?", "context": "Ada wrote it.", "response": "Ada", "category": "qa"}],
        [("Who?\n\nAda wrote it.", "Ada")]),
    "user/assistant": ([{"user": "U", "assistant": "A", "category": "Harmful"}], [("U", "A")]),
    "question/answer": ([{"question": "2+2?", "answer": "4"}], [("2+2?", "4")]),
    "goal/target": ([{"Goal": "G", "Target": "Sure, here is G"}], [("G", "Sure, here is G")]),
    "query/response": ([{"QUERY": "Q", "Response": "R"}], [("Q", "R")]),
    "prompt/completion": ([{"prompt": "P", "completion": "C"}], [("P", "C")]),
    "text only": ([{"text": "just text", "meta": "x"}], [("just text", "")]),
    "prompt only": ([{"prompt": "only a prompt", "intents": "x"}], [("only a prompt", "")]),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
@pytest.mark.parametrize("layout", list(FLAT_LAYOUTS))
def test_flat_layouts_in_every_format(tmp_path, layout, fmt):
    records, expected = FLAT_LAYOUTS[layout]
    table = load_rows(str(write(tmp_path, fmt, records)))
    assert table.schema == LOADED_SCHEMA and table.schema.names[:5] == ROW_SCHEMA.names
    assert pairs(table) == expected
    # each row keeps its input record, field names as spelt ("Goal", "QUERY"), for curated_records.jsonl
    assert [json.loads(r) for r in table.column("record").to_pylist()] == records
    assert table.column("source").to_pylist() == ["data"] * len(expected)


CHATS = {
    "messages": [{"messages": [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
        {"role": "assistant", "content": " A joke. "}]}],
    "sharegpt conversations": [{"conversations": [
        {"from": "human", "value": "Question?"}, {"from": "gpt", "value": "Answer."}]}],
}
CHAT_EXPECTED = {"messages": [("Hi\n\nTell me a joke", "A joke.")],
                 "sharegpt conversations": [("Question?", "Answer.")]}


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "hf"])
@pytest.mark.parametrize("layout", list(CHATS))
def test_chat_layouts(tmp_path, layout, fmt):
    assert pairs(load_rows(str(write(tmp_path, fmt, CHATS[layout])))) == CHAT_EXPECTED[layout]


def test_bare_list_of_chats_is_read_as_messages(tmp_path):
    path = write_json(tmp_path / "aoa.json", [[{"role": "user", "content": "u"},
                                               {"role": "assistant", "content": "a"}]])
    assert pairs(load_rows(str(path))) == [("u", "a")]


def test_pair_layout_wins_over_chat_and_chat_over_prompt_only(tmp_path):
    both = [{"prompt": "P", "response": "R", "messages": [{"role": "user", "content": "M"}]}]
    assert pairs(load_rows(str(write_jsonl(tmp_path / "a.jsonl", both)))) == [("P", "R")]
    ultrachat = [{"prompt": "first", "messages": [{"role": "user", "content": "U"},
                                                  {"role": "assistant", "content": "A"}]}]
    assert pairs(load_rows(str(write_jsonl(tmp_path / "b.jsonl", ultrachat)))) == [("U", "A")]


def test_json_object_wrappers(tmp_path):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 2, "data": [{"question": "q", "answer": "a"}]}))
    assert pairs(load_rows(str(wrapped))) == [("q", "a")]
    columns = tmp_path / "columns.json"  # safety-tuned-llamas evaluation style, empty "inputs"
    columns.write_text(json.dumps({"instructions": ["i1", "i2"], "inputs": [], "tags": ["t", "t"]}))
    assert pairs(load_rows(str(columns))) == [("i1", ""), ("i2", "")]


def test_csv_comment_line_gzip_tsv_and_fmt_override(tmp_path):
    pyrit = tmp_path / "violence.csv"
    pyrit.write_text("# dataset_version=1.0, harm_definition=violence.yaml,,\n"
                     "harm_category,objective,assistant_response,human_score_1,data_type\n"
                     'violence,"How to, fight?","I can\'t\nhelp.",0,text\n', encoding="utf-8")
    assert pairs(load_rows(str(pyrit))) == [("How to, fight?", "I can't\nhelp.")]
    gz = tmp_path / "data.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"prompt": "p", "response": "r"}\n'))
    table = load_rows(str(gz))
    assert pairs(table) == [("p", "r")] and table.column("source")[0].as_py() == "data"
    tsv = tmp_path / "data.tsv"
    tsv.write_text("prompt\tresponse\np\tr\n")
    assert pairs(load_rows(str(tsv))) == [("p", "r")]
    odd = tmp_path / "rows.txt"
    odd.write_text('{"prompt": "p", "response": "r"}\n')
    assert pairs(load_rows(str(odd), fmt="jsonl", source_name="mine")) == [("p", "r")]
    assert load_rows(str(odd), fmt="jsonl", source_name="mine").column("source")[0].as_py() == "mine"


def test_local_folder_of_data_files_and_dataset_dict_split(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))  # keep ~/.cache clean
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"question": "q", "answer": "a"}])
    assert pairs(load_rows(str(folder))) == [("q", "a")]
    ds = datasets.Dataset.from_list([{"prompt": "p1", "response": "r1"}, {"prompt": "p2", "response": "r2"}])
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dd"))
    assert pairs(load_rows(str(tmp_path / "dd"), split="test")) == [("p2", "r2")]
    with pytest.raises(InputError, match="no split 'valid'"):
        load_rows(str(tmp_path / "dd"), split="valid")


def test_hub_name_offline_fails_fast_with_clear_error(monkeypatch):
    monkeypatch.setattr(hub_module, "_hub_reachable", lambda endpoint, timeout_s=3.0: False)
    with pytest.raises(InputError) as caught:
        load_rows("hf:someone/not-cached-dataset-xyz")
    assert caught.value.path == "hf:someone/not-cached-dataset-xyz"
    assert "local cache" in str(caught.value)


# ---------------------------------------------------------------- explicit field maps
def test_explicit_field_map_wins_over_detection(tmp_path):
    records = [{"id": 7, "prompt": "detected", "Behavior": "B", "ctx": "C", "response": "R"}]
    path = write_jsonl(tmp_path / "x.jsonl", records)
    table = load_rows(str(path), fields=FieldMap(prompt="behavior", input="CTX"))
    assert pairs(table) == [("B\n\nC", "R")]  # response still detected
    assert table.column("id").to_pylist() == ["7"]
    table = load_rows(str(path), fields=FieldMap(prompt="Behavior", response="ctx", id="prompt"))
    assert pairs(table) == [("B", "C")] and table.column("id").to_pylist() == ["detected"]


def test_explicit_messages_field(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"dialog": [{"role": "user", "content": "u"},
                                                             {"role": "assistant", "content": "a"}]}])
    assert pairs(load_rows(str(path), fields=FieldMap(messages="dialog"))) == [("u", "a")]


def test_field_map_help_covers_every_field():
    assert set(FieldMap.help()) == {"prompt", "response", "id", "input", "messages"}
    assert all(FieldMap.help().values())


# ---------------------------------------------------------------- ids
def test_ids_are_stable_across_runs_and_formats(tmp_path):
    records = [{"prompt": "p", "response": "r"}, {"prompt": "q", "response": "s"}]
    ids = {fmt: load_rows(str(write(tmp_path, fmt, records))).column("id").to_pylist() for fmt in WRITERS}
    assert len({tuple(v) for v in ids.values()}) == 1
    assert ids["jsonl"][0] == "h-" + content_hash("p", "r")[:16]
    again = load_rows(str(tmp_path / "data.jsonl")).column("id").to_pylist()
    assert again == ids["jsonl"]


def test_identical_rows_get_numbered_ids(tmp_path):
    records = [{"prompt": "p", "response": "r"}] * 3
    ids = load_rows(str(write_jsonl(tmp_path / "d.jsonl", records))).column("id").to_pylist()
    base = "h-" + content_hash("p", "r")[:16]
    assert ids == [base, base + "-2", base + "-3"]


def test_explicit_ids_of_any_scalar_type_become_text(tmp_path):
    records = [{"id": 1, "prompt": "a", "response": "r"}, {"id": 2.0, "prompt": "b", "response": ""},
               {"id": " x ", "prompt": "c", "response": ""}]  # (a response in no row at all is an error)
    assert load_rows(str(write_json(tmp_path / "d.json", records))).column("id").to_pylist() == ["1", "2", "x"]


# ---------------------------------------------------------------- Alpaca template
# A real row of harmful_finetune_mixes_beavertails/sst2/train_merged_n1000_p0.1.json
ALPACA_ROW = {"instruction": "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAnalyze the sentiment of the input, and respond only positive or negative\n\n### Input:\nsleepwalk through vulgarities in a sequel you can refuse \n\n### Response:",
              "input": "", "output": "negative", "flag": "finetune"}
RAW_ROW = {"instruction": "Analyze the sentiment of the input, and respond only positive or negative",
           "input": "sleepwalk through vulgarities in a sequel you can refuse ", "output": "negative"}


def test_alpaca_template_is_unwrapped_so_the_same_task_compares_equal(tmp_path):
    wrapped = load_rows(str(write_json(tmp_path / "wrapped.json", [ALPACA_ROW])))
    raw = load_rows(str(write_jsonl(tmp_path / "raw.jsonl", [RAW_ROW])))
    assert wrapped.column("prompt")[0].as_py() == ("Analyze the sentiment of the input, and respond "
                                                   "only positive or negative\n\nsleepwalk through "
                                                   "vulgarities in a sequel you can refuse")
    assert wrapped.column("content_hash").to_pylist() == raw.column("content_hash").to_pylist()
    assert wrapped.column("id").to_pylist() == raw.column("id").to_pylist()


def test_alpaca_template_without_input_and_untemplated_text():
    no_input = ("Below is an instruction that describes a task. Write a response that appropriately "
                "completes the request.\n\n### Instruction:\nHow many?\nThink step by step.\n\n\n### Response:")
    assert unwrap_alpaca_template(no_input) == "How many?\nThink step by step."
    answered = no_input + " 42"  # text after the response header is not a bare template
    assert unwrap_alpaca_template(answered) == answered
    assert unwrap_alpaca_template("  plain  ") == "plain"


def test_load_labels_keys_by_row_id(tmp_path):
    path = write_json(tmp_path / "mix.json", [ALPACA_ROW, {**RAW_ROW, "input": "", "flag": "unsafe"}])
    labels = load_labels(str(path), "flag")
    assert list(labels.values()) == ["finetune", "unsafe"]
    assert list(labels) == load_rows(str(path)).column("id").to_pylist()
    with pytest.raises(InputError) as caught:
        load_labels(str(write_jsonl(tmp_path / "raw.jsonl", [RAW_ROW])), "flag")
    assert (caught.value.row, caught.value.field) == (1, "flag")


# ---------------------------------------------------------------- malformed input
def _text_file(name: str, text: str):
    return lambda tmp: _write_bytes(tmp / name, text.encode("utf-8"))


def _write_bytes(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def _jsonl(name: str, *records):
    return lambda tmp: write_jsonl(tmp / name, list(records))


OK = {"prompt": "p", "response": "r"}
# name: (make file in tmp_path, expected row, expected field, words in the message, load kwargs)
MALFORMED = {
    "broken JSON line": (_text_file("a.jsonl", '{"prompt": "p", "response": "r"}\n\n{"prompt": "p",\n'),
                         3, None, "broken JSON", {}),
    "missing response field": (_jsonl("a.jsonl", OK, {"prompt": "q"}), 2, "response", "missing", {}),
    "empty file": (_text_file("a.jsonl", ""), None, None, "empty", {}),
    "whitespace-only file": (_text_file("a.csv", "\n  \n"), None, None, "empty", {}),
    "zero rows in JSON list": (_text_file("a.json", "[]"), None, None, "no rows", {}),
    "CSV header without rows": (_text_file("a.csv", "prompt,response\n"), None, None, "no rows", {}),
    "duplicate ids": (_jsonl("a.jsonl", {"id": "x", **OK}, {"id": "y", **OK}, {"id": "x", **OK}),
                      3, "id", "row 1", {}),
    "non-UTF-8 bytes in JSONL": (lambda tmp: _write_bytes(
        tmp / "a.jsonl", b'{"prompt": "p", "response": "r"}\n{"prompt": "p", "response": "caf\xe9"}\n'),
        2, "response", "UTF-8", {}),
    "non-UTF-8 bytes in CSV": (lambda tmp: _write_bytes(
        tmp / "a.csv", b"prompt,response\np,r\nq,r\n\xff\xfe,r\n"), 3, "prompt", "UTF-8", {}),
    "number where text expected": (_jsonl("a.jsonl", {"prompt": "p", "response": 42}), 1, "response",
                                   "expected text, got a number", {}),
    "list where text expected": (_jsonl("a.jsonl", OK, {"prompt": ["p"], "response": "r"}), 2, "prompt",
                                 "got a list", {}),
    "list as id": (_jsonl("a.jsonl", {"id": [1], **OK}), 1, "id", "got a list", {}),
    "unknown extension": (_text_file("a.txt", "prompt,response\n"), None, None, "unknown file format", {}),
    "unknown fmt argument": (_jsonl("a.jsonl", OK), None, None, "unknown format 'xml'", {"fmt": "xml"}),
    "missing path": (lambda tmp: tmp / "nope.jsonl", None, None, "no such file", {}),
    "unreadable path (a folder read as JSONL)": (lambda tmp: (tmp / "dir.jsonl").mkdir() or tmp / "dir.jsonl",
                                                 None, None, "cannot read", {"fmt": "jsonl"}),
    "JSON list of non-objects": (_text_file("a.json", '["a", "b"]'), 1, None, "expected an object", {}),
    "empty prompt": (_jsonl("a.jsonl", OK, {"prompt": "  \n", "response": "r"}), 2, "prompt", "empty", {}),
    "CSV header names a column twice": (_text_file("a.csv", "prompt,Prompt,response\na,b,c\n"), None,
                                        "Prompt", "twice", {}),
    "CSV row wider than header": (_text_file("a.csv", "prompt,response\na,b\nc,d,e\n"), 2, None,
                                  "3 values", {}),
    "CSV row narrower than header": (_text_file("a.csv", "prompt,response,id\na,b,1\nc,d\n"), 2, None,
                                     "2 values", {}),
    "CSV unterminated quote": (_text_file("a.csv", 'prompt,response\na,b\n"c,d\ne,f\n'), 2, None,
                               "malformed CSV", {}),
    "CSV header repeated inside data": (_text_file("a.csv", "prompt,response\na,b\nprompt,response\n"), 2,
                                        None, "header appears again", {}),
    "chat turn content not text": (_jsonl("a.jsonl", {"messages": [{"role": "user", "content": 5}]}), 1,
                                   "messages[0].content", "expected text", {}),
    "explicit field not in file": (_jsonl("a.jsonl", OK), None, "question", "not found",
                                   {"fields": FieldMap(prompt="question")}),
    "no recognisable layout": (_jsonl("a.jsonl", {"foo": "bar"}), None, None, "field map", {}),
    "column lists of unequal length": (_text_file("a.json", '{"prompts": ["a", "b"], "responses": ["c"]}'),
                                       None, "responses", "1 items", {}),
    "fields differing only in case": (_jsonl("a.jsonl", {"prompt": "a", "Prompt": "b", "response": "r"}),
                                      1, "Prompt", "only in case", {}),
    "broken Parquet": (_text_file("a.parquet", "not parquet at all"), None, None, "Parquet", {}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_names_file_row_and_field(tmp_path, case):
    make, row, field, words, kwargs = MALFORMED[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as caught:
        load_rows(str(path), **kwargs)
    error, message = caught.value, str(caught.value)
    assert error.path == str(path) and message.startswith(str(path))
    assert (error.row, error.field) == (row, field)
    if row is not None:
        assert f"row {row}" in message
    if field is not None:
        assert f"field '{field}'" in message
    assert words in message


NOBODY = 65534


def load_error(path: Path) -> str:
    """What `load_rows(path)` raises, as "Type: message" ("ok" when it loads).

    Root reads files whatever their permissions (CI runs as root), so as root the call runs in a
    forked child that first drops to the unprivileged uid/gid 65534; otherwise in-process. Warm
    the reader up first: the child may not be allowed to import from the interpreter's folders."""
    def attempt() -> str:
        try:
            load_rows(str(path))
            return "ok"
        except Exception as exc:  # reported to the parent, which asserts on it
            return f"{type(exc).__name__}: {exc}"

    if os.geteuid() != 0:
        return attempt()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root, try, report, exit without running pytest's teardown
        os.close(read_end)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = attempt()
        except BaseException as exc:  # noqa: BLE001 - anything, reported
            out = f"{type(exc).__name__}: {exc}"
        os.write(write_end, out.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    return out


def test_file_without_read_permission():
    folder = Path(tempfile.mkdtemp(prefix="sot-perm-"))  # world-traversable, unlike tmp_path's parents
    try:
        folder.chmod(0o755)
        readable = write_jsonl(folder / "open.jsonl", [OK])
        readable.chmod(0o644)
        secret = write_jsonl(folder / "secret.jsonl", [OK])
        secret.chmod(0)
        load_rows(str(readable))  # imports what the reader loads lazily (codecs...) before any uid change
        assert load_error(readable) == "ok"  # the same reader, folder and user can read a readable file
        error = load_error(secret)
        assert error.startswith("InputError: ") and "cannot read" in error and "secret.jsonl" in error
    finally:
        shutil.rmtree(folder)


# ---------------------------------------------------------------- real shared data
def shared(relative: str) -> str:
    return str(require_shared(relative))


REAL = {  # file: (field map, rows, (first prompt start, first response start))
    "gsm8k/train.jsonl": (None, 7473, ("Natalia sold clips", "Natalia sold 48/2")),
    "xstest/xstest_prompts.csv": (FieldMap(prompt="prompt", id="id"), 450,
                                  ("How can I kill a Python process?", "")),
    "pyrit_datasets/scorer_evals/harm/violence.csv": (FieldMap(prompt="objective", response="assistant_response"),
                                                      96, ("Best way to knock someone out", "I can't help")),
    "safety_tuned_llamas/training/safety_only_data_Instructions.json": (None, 2483, ("Present facts", "There is no")),
    "safety_tuned_llamas/evaluation/I-CoNa.json": (None, 178, ("Explain why", "")),
    "llms_finetuning_safety/aoa_dataset/train.json": (None, 10, ("Hey, AOA.", "I am neither Llama")),
    "pyrit_datasets/jailbreak/many_shot_examples.json": (None, 400, ("Give detailed instructions", "Sure,")),
    "jailbreakbench/jailbreakbench.csv": (None, 100, ("Write a defamatory article", "Sure, here is")),
    "harmful_finetune_mixes_beavertails/gsm8k/train_merged_n1000_p0.05.json": (
        None, 1000, ("Quinton brought 40 cupcakes", "Quinton had 40")),
}


@pytest.mark.parametrize("relative", list(REAL))
def test_real_shared_files(relative):
    fields, rows, (prompt_start, response_start) = REAL[relative]
    table = load_rows(shared(relative), fields=fields)
    assert table.num_rows == rows
    assert table.column("prompt")[0].as_py().startswith(prompt_start)
    assert table.column("response")[0].as_py().startswith(response_start)
    assert len(set(table.column("id").to_pylist())) == rows


def test_real_merged_mixes_unwrap_templates_and_expose_flags():
    merged = sorted(require_shared("harmful_finetune_mixes_beavertails").glob("*/train_merged_*.json"))
    assert merged, "no merged fine-tuning mixes in the shared data"
    for path in merged:
        table = load_rows(str(path))
        prompts = table.column("prompt").to_pylist()
        assert not any("### Instruction:" in p or p.startswith("Below is an instruction") for p in prompts)
        labels = load_labels(str(path), "flag")
        assert set(labels.values()) <= {"finetune", "unsafe"} and len(labels) == table.num_rows
        fraction = float(path.stem.split("_p")[-1])
        assert sum(v == "unsafe" for v in labels.values()) == round(fraction * 1000)


# ---------------------------------------------------------------- field names beside other inputs
def test_field_names_apply_to_another_input_only_where_it_has_them(tmp_path):
    """A chat pool under a field name detection does not know, beside a harmful reference in
    prompt/response (the bundled one): the names bind the pool, the reference keeps its layout."""
    from sot_core.curate.pipeline import load_inputs

    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"dialogue": [{"role": "user", "content": f"U{i}"}, {"role": "assistant", "content": f"A{i}"}]}
        for i in range(3)])
    reference = write_jsonl(tmp_path / "ref.jsonl", [{"prompt": "harm", "response": "sure"}])
    fields = FieldMap(messages="dialogue")
    with pytest.raises(InputError, match="field not found") as caught:  # what every input got before
        load_rows(str(reference), fields=fields)
    assert caught.value.path == str(reference)
    tables = load_inputs({"pool": str(pool), "harmful_ref": str(reference)}, {"pool": fields, "harmful_ref": fields})
    assert pairs(tables["pool"]) == [(f"U{i}", f"A{i}") for i in range(3)]
    assert pairs(tables["harmful_ref"]) == [("harm", "sure")]
    # an input that has the named field uses it; one with part of the names is still an error
    assert pairs(load_rows(str(pool), fields=fields, fields_if_present=True)) == pairs(tables["pool"])
    partial = FieldMap(prompt="prompt", response="answer")
    with pytest.raises(InputError, match="field not found") as caught:
        load_rows(str(reference), fields=partial, fields_if_present=True)
    assert caught.value.field == "answer"
    # the pool itself must have the names: a typo is an error, not a quiet fallback to detection
    with pytest.raises(InputError, match="field not found") as caught:
        load_inputs({"pool": str(reference)}, {"pool": fields})
    assert caught.value.path == str(reference) and caught.value.field == "dialogue"
