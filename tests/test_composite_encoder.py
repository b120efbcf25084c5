"""`minilm+hf:MODEL` (sot_core.embed.composite): the two encoders side by side, and the LM block
centred on the pool before costs and the budget. Real MiniLM and a tiny random Llama (the LLM
encoder tests' fixture); the centring is checked against a per-row loop written out here."""
from __future__ import annotations

import numpy as np
import pytest

from sot_core.embed.composite import (CompositeEncoder, block_weights, blocks, calibration_digest, calibration_rows,
                                     pool_centred, split_spec)
from sot_core.embed.encoders import MiniLMEncoder, get_encoder
from sot_core.embed.llm_encoder import LastTokenEncoder
from sot_core.errors import OptionError
from test_llm_encoder import ROWS, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("composite") / "model")


def test_encode_is_the_parts_side_by_side(tiny):
    enc = get_encoder(f"minilm+hf:{tiny}:pair@1")
    assert isinstance(enc, CompositeEncoder) and enc.dim == 384 + 32 and enc.passes == 2
    prompts, responses = [p for p, _ in ROWS], [r for _, r in ROWS]
    z = enc.encode(prompts, responses, batch_size=2)
    assert z.shape == (len(ROWS), 416) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(z[:, :384] * np.sqrt(2), MiniLMEncoder().encode(prompts, responses), atol=1e-5)
    lm = LastTokenEncoder(tiny, layer=1)
    calib_p, calib_r = calibration_rows()
    assert len(calib_p) == 50  # the bundled demo anchor
    centre = lm.pair_states(calib_p, calib_r).astype(np.float64).mean(axis=0)  # c_0, the fixed centre
    states = lm.pair_states(prompts, responses).astype(np.float64) - centre
    np.testing.assert_allclose(z[:, 384:] * np.sqrt(2), states / np.linalg.norm(states, axis=1, keepdims=True),
                               atol=1e-5)
    assert not np.allclose(z[:, 384:] * np.sqrt(2), lm.encode(prompts, responses), atol=1e-3)  # c_0 was taken off
    assert f"centre-{calibration_digest(calib_p, calib_r)[:12]}" in enc.encoder_id
    assert blocks(enc.encoder_id) == [(0, 384, False), (384, 416, True)]
    assert MiniLMEncoder().encoder_id + "+" + lm.encoder_id + ":centre-" in enc.encoder_id
    assert get_encoder(f"minilm+hf:{tiny}:pair@0").encoder_id != enc.encoder_id  # the layer keys the cache


def test_spec_parsing_and_errors(tiny):
    assert split_spec("minilm+hf:/m:pair@29") == ["minilm", "hf:/m:pair@29"]
    assert split_spec("hf:/models/a+b/m") == ["hf:/models/a+b/m"]  # a '+' in a path is not a join
    assert split_spec("minilm+hf:/a+b/m") == ["minilm", "hf:/a+b/m"]
    with pytest.raises(OptionError, match="encoder"):
        get_encoder("minilm+hf:/no/such/model")
    with pytest.raises(ValueError, match="at least two"):
        CompositeEncoder([MiniLMEncoder()])
    with pytest.raises(OptionError, match="pair view"):
        get_encoder(f"minilm+hf:{tiny}:response")
    assert blocks(MiniLMEncoder().encoder_id) is None


def direct(rows: np.ndarray, pool: np.ndarray, layout, k: int) -> np.ndarray:
    """The centring written out row by row, in float64."""
    out = np.array(rows, dtype=np.float64)
    for start, end, centred in layout:
        if not centred:
            continue
        mean = sum(np.asarray(r[start:end], np.float64) * np.sqrt(k) for r in pool) / len(pool)
        for i, r in enumerate(rows):
            v = np.asarray(r[start:end], np.float64) * np.sqrt(k) - mean
            out[i, start:end] = v / np.linalg.norm(v) / np.sqrt(k)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_centred_matches_the_formula(dtype):
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    common = rng.normal(size=6) * 5  # LM states share one large direction
    make = lambda n: np.hstack([unit(rng.normal(size=(n, 4))), unit(common + rng.normal(size=(n, 6)))]) / np.sqrt(2)  # noqa: E731
    pool, anchor = make(40).astype(dtype), make(7).astype(dtype)
    eid = "concat.v1[4,6c]:minilm-x+hf-lasttoken:y"
    layout = blocks(eid)
    p2, a2 = pool_centred(eid, pool, anchor)
    np.testing.assert_allclose(p2, direct(pool, pool, layout, 2), atol=1e-5)
    np.testing.assert_allclose(a2, direct(anchor, pool, layout, 2), atol=1e-5)  # the pool's mean, not its own
    np.testing.assert_allclose(np.linalg.norm(p2, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p2[:, :4], pool[:, :4].astype(np.float32))  # MiniLM's block untouched
    # what it is for: before, every LM block is nearly parallel; after, the pool's blocks spread out
    before, after = pool[:, 4:] @ pool[:, 4:].T * 2, p2[:, 4:] @ p2[:, 4:].T * 2
    assert before.mean() > 0.8 and abs(after.mean()) < 0.1
    assert pool.dtype == dtype and not np.shares_memory(p2, pool)  # inputs are not modified


@pytest.mark.parametrize("lm_share", [0.1, 0.25, 0.5, 0.9])
def test_lm_share_weighs_the_blocks_cosines(lm_share):
    """cos of the weighted rows = (1 - W) cos of the MiniLM blocks + W cos of the centred LM blocks,
    each cosine computed here from the unit blocks (the centring from `direct`)."""
    rng = np.random.default_rng(1)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    pool = np.hstack([unit(rng.normal(size=(30, 4))), unit(3 + rng.normal(size=(30, 6)))]) / np.sqrt(2)
    ref = np.hstack([unit(rng.normal(size=(5, 4))), unit(3 + rng.normal(size=(5, 6)))]) / np.sqrt(2)
    eid = "concat.v1[4,6c]:minilm-x+hf-lasttoken:y"
    p2, r2 = pool_centred(eid, pool, ref, lm_share=lm_share)
    centred_pool, centred_ref = (direct(x, pool, blocks(eid), 2) * np.sqrt(2) for x in (pool, ref))
    cos_minilm = (pool[:, :4] * np.sqrt(2)) @ (ref[:, :4] * np.sqrt(2)).T
    cos_lm = unit(centred_pool[:, 4:]) @ unit(centred_ref[:, 4:]).T
    np.testing.assert_allclose(p2 @ r2.T, (1 - lm_share) * cos_minilm + lm_share * cos_lm, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(p2, axis=1), 1.0, atol=1e-5)
    if lm_share == 0.5:  # equal weights: what the stored vectors' own 1/sqrt(k) weighting gives
        np.testing.assert_allclose(p2, pool_centred(eid, pool)[0], atol=1e-6)


def test_block_weights_and_bad_shares():
    two, three = blocks("concat.v1[4,6c]:a+b"), blocks("concat.v1[4,6c,2c]:a+b+c")
    assert block_weights(two, None) == [0.5, 0.5] and block_weights(two, 0.25) == [0.75, 0.25]
    assert block_weights(three, None) == pytest.approx([1 / 3] * 3)
    assert block_weights(three, 0.4) == pytest.approx([0.6, 0.2, 0.2])  # the LM share split over both LM blocks
    assert block_weights(blocks("concat.v1[4,6]:a+b"), 0.25) == [0.5, 0.5]  # no LM block: nothing to weigh
    x = np.full((3, 10), 1 / np.sqrt(10), np.float32)
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="lm_share"):
            pool_centred("concat.v1[4,6c]:a+b", x, lm_share=bad)


def test_lm_share_needs_a_composite_encoder():
    from sot_core.config import CurateConfig

    with pytest.raises(ValueError, match="composite encoder"):
        CurateConfig(encoder="minilm", lm_share=0.25)
    assert CurateConfig(encoder="minilm+hf:/some/model:pair@29", lm_share=0.25).lm_share == 0.25
    assert CurateConfig().lm_share is None


def test_pool_centred_leaves_other_encoders_alone():
    x, y = np.eye(3, dtype=np.float32), np.ones((2, 3), dtype=np.float32)
    for eid in ("minilm:pair:v1", "concat.v1[2,1]:a+b"):
        a, b = pool_centred(eid, x, y)
        assert a is x and b is y
    with pytest.raises(ValueError, match="empty pool"):
        pool_centred("concat.v1[2,1c]:a+b", np.zeros((0, 3), np.float32), y)


def test_costs_stage_sees_pool_centred_states(tmp_path, tiny):
    """The costs stage of a run with the composite encoder: real store (DuckDB + Parquet), real
    encoders, costs compared with 1 - cosine of the centred vectors computed here."""
    from sot_core.curate import pipeline
    from sot_core.data.loaders import load_rows
    from sot_core.data.store import Store
    from test_cli_process import INPUTS

    store, spec = Store(tmp_path / "home"), f"minilm+hf:{tiny}:pair"
    ids = {}
    for role, name in (("pool", "pool.jsonl"), ("anchor", "anchor.jsonl"), ("harmful", "harm.jsonl")):
        path = str(INPUTS / name)
        ids[role] = pipeline.ingest(store, path, load_rows(path), role)["dataset_id"]
        encoder_id = pipeline.embed(store, ids[role], spec, show_progress=False)["encoder_id"]
    costs = pipeline.build_costs(store, ids["pool"], ids["anchor"], ids["harmful"], encoder_id, knn=None)
    raw = {role: pipeline.load_embeddings(store, d, encoder_id) for role, d in ids.items()}
    layout = blocks(encoder_id)
    pool = direct(raw["pool"], raw["pool"], layout, 2)
    for role in ("anchor", "harmful"):
        expected = np.clip(1 - pool @ direct(raw[role], raw["pool"], layout, 2).T, 0, 2)
        np.testing.assert_allclose(np.load(f"{costs['path']}/{role}.npy"), expected, atol=1e-4)
    uncentred = np.clip(1 - raw["pool"] @ raw["anchor"].T, 0, 2)
    assert not np.allclose(np.load(f"{costs['path']}/anchor.npy"), uncentred, atol=1e-3)
    weighted = pipeline.build_costs(store, ids["pool"], ids["anchor"], ids["harmful"], encoder_id, knn=None,
                                    lm_share=0.25)
    assert weighted["cost_key"] != costs["cost_key"]  # the share keys the stage: no stale costs served
    p2, h2 = pool_centred(encoder_id, raw["pool"], raw["harmful"], lm_share=0.25)
    np.testing.assert_allclose(np.load(f"{weighted['path']}/harmful.npy"), np.clip(1 - p2 @ h2.T, 0, 2), atol=1e-4)
    assert not np.allclose(np.load(f"{weighted['path']}/harmful.npy"), np.load(f"{costs['path']}/harmful.npy"),
                           atol=1e-3)


def test_sot_curate_with_the_composite_encoder(tmp_path, tiny, capsys, prefect_backend):
    """`sot curate --encoder minilm+hf:MODEL --keep auto` in this process, on the session's Prefect
    server: the run goes through and records the composite id. The tiny model is random, so half of
    each vector is noise: what the composite buys is measured with the real aligned model in
    benchmarks/RESULTS.md (section aligned_budget), not here."""
    import json

    from sot_prefect.flows.cli import main
    from test_cli_process import SMALL

    out = tmp_path / "out"
    code = main(["curate", *SMALL, "--home", str(tmp_path / "home"), "--out-dir", str(out),
                 "--encoder", f"minilm+hf:{tiny}:pair", "--keep", "auto"])
    assert code == 0, capsys.readouterr().err[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert json.dumps(info).count("concat.v1[384,32c]") >= 1
    kept = [json.loads(line)["id"] for line in (out / "curated.jsonl").read_text().splitlines()]
    pool = {json.loads(line)["id"] for line in open(SMALL[1])}
    assert kept and set(kept) <= pool and len(kept) == info["counts"]["selected"]
    # --lm-share: a second run on the same store reuses the embeddings, recomputes costs and budget
    out2 = tmp_path / "out2"
    code = main(["curate", *SMALL, "--home", str(tmp_path / "home"), "--out-dir", str(out2),
                 "--encoder", f"minilm+hf:{tiny}:pair", "--keep", "auto", "--lm-share", "0.25"])
    assert code == 0, capsys.readouterr().err[-2000:]
    info2 = json.loads((out2 / "run.json").read_text())
    assert info2["config"]["lm_share"] == 0.25 and info["config"]["lm_share"] is None
    assert info2["cached_stages"] == ["ingest"] and not any(info2["counts"]["embedded_now"].values())
    assert info2["budget"] != info["budget"]  # another weighting, another ranking of the same rows
