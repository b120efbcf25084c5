"""Guards (issue 14): an empty or near-empty selection fails loudly, a labels file that names no
pool row is refused, and mostly harmful-like inputs are named in a warning."""
from __future__ import annotations

import pytest

from sot_core.curate.guards import MIN_SELECTED, SelectionError, check_selection, composition_warnings
from sot_core.errors import InputError
from tests.conftest import DEMO, require_shared
from tests.test_cli_process import SMALL


def test_check_selection_refuses_empty_and_near_empty():
    with pytest.raises(SelectionError, match="keeps 0 of 20 rows"):
        check_selection(0, 20, 0.01)
    with pytest.raises(SelectionError, match="near-empty"):
        check_selection(MIN_SELECTED - 1, 1000, 0.004)
    check_selection(MIN_SELECTED, 1000, 0.005)
    check_selection(3, 3, 1.0)  # a tiny pool kept whole is not an error


def test_keep_001_on_a_small_pool_fails_with_one_line_and_publishes_nothing(tmp_path, capsys, prefect_backend):
    """The issue's case: --keep 0.01 on a small pool published an empty curated set with exit 0.
    `sot curate` runs in this process (tests/test_cli_process.py runs the real process)."""
    from sot_prefect.flows.cli import main

    home, out = tmp_path / "home", tmp_path / "out"
    code = main(["curate", *SMALL, "--home", str(home), "--out-dir", str(out), "--keep", "0.01"])
    printed = capsys.readouterr()
    assert code != 0, printed.out
    last = printed.err.strip().splitlines()[-1]
    assert last.startswith("sot: error:") and "keeps 0 of 30 rows" in last and "--keep" in last
    assert not (out / "curated.jsonl").exists() and not (out / "weights.parquet").exists()
    assert not list((home / "curated").glob("*")) if (home / "curated").exists() else True


def test_labels_file_matching_no_pool_id_is_refused(tmp_path):
    from sot_core.curate.pipeline import load_inputs

    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\nother-pool-1,1\nother-pool-2,0\n")
    sources = {"pool": str(DEMO / "pool.jsonl"), "safe_anchor": str(DEMO / "safe_anchor.jsonl"),
               "harmful_ref": str(DEMO / "harmful_ref.jsonl")}
    with pytest.raises(InputError) as caught:
        load_inputs(sources, labels=str(labels))
    message = str(caught.value)
    assert message.startswith(str(labels)) and "no id of the labels file matches" in message and "\n" not in message
    # a labels file naming some pool rows is fine
    labels.write_text("id,label\nother-pool-1,1\n" + f"{(DEMO / 'pool.jsonl').read_text().split(chr(34))[3]},0\n")
    load_inputs(sources, labels=str(labels))


def test_composition_warnings_name_the_problem():
    assert composition_warnings(0.1, 0.0) == []
    assert composition_warnings(None, None) == []
    pool, = composition_warnings(0.7, 0.1)
    assert "pool looks mostly harmful-like" in pool and "70%" in pool
    anchor, = composition_warnings(0.1, 0.9)
    assert "safe anchor looks mostly like the harmful reference" in anchor


def test_a_labelled_pool_without_ids_labels_itself(tmp_path):
    """A fine-tuning mix (Alpaca-templated rows with a `flag`, no id field): `--labels` on the pool file
    with `--label-field flag` matches every row by the id ingestion gives it; an id,label file that
    lost its id column is still refused with the file named."""
    import json

    from sot_core.curate.pipeline import load_inputs
    from sot_core.curate.quality import read_labels
    from sot_core.data.loaders import load_rows

    template = "Below is an instruction that describes a task. Write a response.\n\n### Instruction:\n{}\n\n### Response:"
    mix = [{"instruction": template.format(f"Question {i}?"), "input": "", "output": f"Answer {i}.",
            "flag": "unsafe" if i % 4 == 0 else "safe"} for i in range(12)]
    pool = tmp_path / "mix.json"
    pool.write_text(json.dumps(mix), encoding="utf-8")
    labels = read_labels(pool, "flag")
    ids = load_rows(str(pool)).column("id").to_pylist()
    assert list(labels) == ids and [labels[i] for i in ids] == [r["flag"] == "unsafe" for r in mix]
    sources = {"pool": str(pool), "safe_anchor": str(DEMO / "safe_anchor.jsonl"),
               "harmful_ref": str(DEMO / "harmful_ref.jsonl")}
    load_inputs(sources, labels=str(pool), label_field="flag")  # matches: no error
    with pytest.raises(InputError, match="label field is missing") as caught:
        load_inputs(sources, labels=str(pool))  # the default field, `label`, is not in the mix
    assert caught.value.path == str(pool) and caught.value.field == "label"
    lost = tmp_path / "labels.csv"
    lost.write_text("row,label\nx,1\n")
    with pytest.raises(InputError) as caught:
        load_inputs(sources, labels=str(lost))
    assert caught.value.path == str(lost)


def brute_force_outside(pool, anchor, q=0.1):
    import numpy as np

    nearest_other = [max(float(anchor[j] @ anchor[k]) for k in range(len(anchor)) if k != j) for j in range(len(anchor))]
    cut = np.quantile(nearest_other, q)
    return sum(max(float(x @ y) for y in anchor) < cut for x in pool) / len(pool)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outside_anchor_share_matches_brute_force_across_blocks(seed):
    import numpy as np

    from sot_core.curate.guards import outside_anchor_share

    rng = np.random.default_rng(seed)
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    centre = rng.normal(size=16)
    anchor = unit(centre + rng.normal(size=(12, 16)))
    pool = unit(np.vstack([centre + rng.normal(size=(40, 16)), -centre + rng.normal(size=(25, 16))]))
    expected = brute_force_outside(pool, anchor)
    assert outside_anchor_share(pool, anchor, block=7) == pytest.approx(expected)  # blocks of 7: a ragged last one
    assert outside_anchor_share(pool, anchor) == pytest.approx(expected)
    # a pool drawn like the anchor sits mostly inside; a pool around the opposite centre entirely outside
    assert outside_anchor_share(pool[:40], anchor) < 0.5 < outside_anchor_share(pool[40:], anchor) == 1.0
    assert outside_anchor_share(pool, anchor[:1]) is None and outside_anchor_share(pool[:0], anchor) is None


def test_an_anchor_of_another_task_is_named_in_a_warning():
    """Real rows through MiniLM: Alpaca instructions against the bundled GSM8K anchor sit outside it,
    the demo's own GSM8K pool inside; only the first is warned about."""
    from sot_core.curate.guards import composition_warnings, outside_anchor_share
    from sot_core.data.loaders import load_rows
    from sot_core.embed import get_encoder

    encoder = get_encoder("minilm")
    embed = lambda t: encoder.encode(t.column("prompt").to_pylist(), t.column("response").to_pylist())  # noqa: E731
    anchor = embed(load_rows(str(DEMO / "safe_anchor.jsonl")))
    alpaca = embed(load_rows(str(require_shared("alpaca_en_demo/alpaca_en_demo.json"))).slice(0, 100))
    demo = embed(load_rows(str(DEMO / "pool.jsonl")).slice(0, 100))
    other, own = outside_anchor_share(alpaca, anchor), outside_anchor_share(demo, anchor)
    assert other > 0.9 and own < 0.3
    assert any("unlike the safe anchor" in w for w in composition_warnings(0.1, 0.0, other))
    assert composition_warnings(0.1, 0.0, own) == []
