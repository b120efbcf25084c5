"""Safety replay (`sot_core.train.replay`): how many trusted rows are mixed in, with which weight, and
that a bad replay file fails clearly without touching an existing mix."""
from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest

from sot_core.errors import InputError
from sot_core.train.replay import mix_replay, write_replay_mix

REPO = Path(__file__).resolve().parents[1]
REFUSALS = REPO / "data" / "refusals" / "pyrit_refusals.jsonl"


def curated_rows(n: int, weight=lambda i: 0.5 + (i % 3) * 0.5) -> list[dict]:
    return [{"id": f"c{i}", "prompt": f"p{i}", "response": f"r{i}", "source": "pool", "weight": weight(i)}
            for i in range(n)]


def replay_rows(n: int) -> list[dict]:
    return [{"id": f"s{i}", "prompt": f"harmful {i}", "response": "I can't help with that."} for i in range(n)]


@pytest.mark.parametrize("n,fraction,expected", [(100, 0.1, 10), (30, 0.25, 8), (7, 0.0, 0), (10, 1.0, 10)])
def test_replay_count_weight_and_source(n, fraction, expected):
    cur = curated_rows(n)
    mixed = mix_replay(cur, replay_rows(50), fraction, seed=1)
    replayed = [r for r in mixed if r["source"] == "replay"]
    assert len(mixed) == n + expected and len(replayed) == expected
    mean_w = sum(r["weight"] for r in cur) / n
    assert all(r["weight"] == pytest.approx(mean_w) for r in replayed)
    assert sorted(r["id"] for r in mixed if r["source"] == "pool") == sorted(r["id"] for r in cur)
    assert len({r["id"] for r in mixed}) == len(mixed)


def test_replay_without_replacement_then_cycles():
    distinct = mix_replay(curated_rows(100), replay_rows(40), 0.3, seed=0)
    counts = Counter(r["prompt"] for r in distinct if r["source"] == "replay")
    assert len(counts) == 30 and max(counts.values()) == 1
    cycled = mix_replay(curated_rows(100), replay_rows(4), 0.1, seed=0)
    counts = Counter(r["prompt"] for r in cycled if r["source"] == "replay")
    assert sorted(counts.values()) == [2, 2, 3, 3]


def test_replay_is_deterministic_per_seed():
    a = mix_replay(curated_rows(60), replay_rows(30), 0.2, seed=3)
    assert a == mix_replay(curated_rows(60), replay_rows(30), 0.2, seed=3)
    assert a != mix_replay(curated_rows(60), replay_rows(30), 0.2, seed=4)


def test_replay_rejects_bad_settings():
    with pytest.raises(ValueError, match="fraction"):
        mix_replay(curated_rows(10), replay_rows(5), 1.5)
    with pytest.raises(ValueError, match="empty"):
        mix_replay(curated_rows(10), [], 0.5)


def test_write_replay_mix_from_bundled_refusals(tmp_path):
    cur = tmp_path / "curated.jsonl"
    cur.write_text("".join(json.dumps(r) + "\n" for r in curated_rows(40)))
    out = write_replay_mix(cur, REFUSALS, 0.25, tmp_path / "mix.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 50
    assert sum(r["source"] == "replay" for r in rows) == 10
    assert all(r["response"] for r in rows)


def test_bad_replay_file_names_row_and_field_and_keeps_old_mix(tmp_path):
    cur = tmp_path / "curated.jsonl"
    cur.write_text("".join(json.dumps(r) + "\n" for r in curated_rows(10)))
    bad = tmp_path / "bad_replay.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "response": "no"}) + "\n" + json.dumps({"prompt": "y", "response": 3}) + "\n")
    out = tmp_path / "mix.jsonl"
    out.write_text("previous mix\n")
    with pytest.raises(InputError) as err:
        write_replay_mix(cur, bad, 0.5, out)
    msg = str(err.value)
    assert "bad_replay.jsonl" in msg and "2" in msg and "response" in msg
    assert out.read_text() == "previous mix\n"


def test_heldout_refusals_are_disjoint_from_alignment_and_evaluation(shared_data):
    import random

    from sot_core.train.align import AlignConfig, _refusal_split
    from sot_core.eval.evaluate import harmful_prompts

    cfg = AlignConfig()
    used, rest = _refusal_split(cfg, shared_data, random.Random(cfg.seed))
    assert len(used) == cfg.n_refusal and len(rest) > 1000
    assert not {r["prompt"] for r in used} & {r["prompt"] for r in rest}
    evaluation = {p.lower() for p in harmful_prompts(shared_data, ["advbench", "harmbench", "strongreject", "jailbreakbench"], 200)}
    assert not evaluation & {r["prompt"].lower() for r in rest}


def test_write_replay_mix_warns_when_rows_must_repeat(tmp_path):
    """85 bundled refusals cannot fill 30% of 400 rows (120 slots) without repeats: say so, then mix."""
    cur = tmp_path / "curated.jsonl"
    cur.write_text("".join(json.dumps(r) + "\n" for r in curated_rows(400)))
    with pytest.warns(UserWarning, match=r"pyrit_refusals.jsonl: 85 replay rows for 120 replay slots"):
        out = write_replay_mix(cur, REFUSALS, 0.3, tmp_path / "mix.jsonl")
    assert sum(json.loads(line)["source"] == "replay" for line in out.read_text().splitlines()) == 120
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_replay_mix(cur, REFUSALS, 0.2, tmp_path / "mix2.jsonl")  # 80 slots <= 85 rows: no warning
