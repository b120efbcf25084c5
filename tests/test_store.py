"""The store: atomic Parquet files, the DuckDB catalog, the embedding cache and its lock."""
from __future__ import annotations

import multiprocessing as mp
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sot_core.errors import StoreBusyError, StoreError
from sot_core.data.schema import ROW_SCHEMA, content_hash
from sot_core.data.store import Store, read_vectors


def make_rows(texts):
    return pa.table(
        {
            "id": [f"r{i}" for i in range(len(texts))],
            "prompt": texts,
            "response": ["ok"] * len(texts),
            "source": ["test"] * len(texts),
            "content_hash": [content_hash(t, "ok") for t in texts],
        },
        schema=ROW_SCHEMA,
    )


def test_dataset_roundtrip_and_idempotence(tmp_path):
    store = Store(tmp_path)
    rows = make_rows(["a", "b", "c"])
    assert store.put_dataset("ds-1", rows, "pool", "mem") is True
    assert store.put_dataset("ds-1", rows, "pool", "mem") is False
    assert store.get_rows("ds-1").equals(rows)
    assert store.query("SELECT count(*) FROM rows WHERE dataset_id = 'ds-1'") == [(3,)]


def test_embeddings_are_fixed_size_float32_and_gathered_in_order(tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(0)
    v1, v2 = rng.random((3, 8), dtype=np.float32), rng.random((2, 8), dtype=np.float32)
    shard = store.put_embeddings("enc", ["h0", "h1", "h2"], v1)
    store.put_embeddings("enc", ["h3", "h4"], v2)
    hashes, vectors = read_vectors(shard)
    assert hashes == ["h0", "h1", "h2"] and vectors.dtype == np.float32
    got = store.get_embeddings(["h4", "h0", "h2", "h0"], "enc")
    np.testing.assert_array_equal(got, np.stack([v2[1], v1[0], v1[2], v1[0]]))
    assert store.missing_hashes(["h1", "h9", "h9", "h4"], "enc") == ["h9"]
    assert store.missing_hashes(["h1"], "other-encoder") == ["h1"]


def test_dimension_clash_is_refused_and_names_the_field(tmp_path):
    store = Store(tmp_path)
    store.put_embeddings("enc", ["h0"], np.ones((1, 8), np.float32))
    with pytest.raises(StoreError, match="field 'dim'.*8.*16"):
        store.put_embeddings("enc", ["h1"], np.ones((1, 16), np.float32))
    assert store.missing_hashes(["h1"], "enc") == ["h1"]  # nothing half-written


def _hold_lock(home, ready, release):
    store = Store(home)
    with store.catalog():
        ready.set()
        release.wait(10)


def test_second_process_queues_then_fails_clearly(tmp_path):
    Store(tmp_path)
    ctx = mp.get_context("spawn")  # forking after torch/faiss threads can hang
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(StoreBusyError, match="in use by another run"):
            Store(tmp_path, lock_timeout=0.5)
    finally:
        release.set()
        holder.join(30)
    assert Store(tmp_path, lock_timeout=5).query("SELECT count(*) FROM datasets") == [(0,)]


def test_store_id_changes_when_the_store_is_wiped(tmp_path):
    first = Store(tmp_path / "a").store_id
    assert Store(tmp_path / "a").store_id == first
    assert Store(tmp_path / "b").store_id != first


def filled_store(home) -> tuple[Store, np.ndarray]:
    """A store with one dataset, one embeddings shard and one curated version."""
    store = Store(home)
    rows = make_rows(["a", "b", "c"])
    store.put_dataset("ds-1", rows, "pool", "mem")
    vectors = np.random.default_rng(1).random((3, 8), dtype=np.float32)
    store.put_embeddings("enc", rows.column("content_hash").to_pylist(), vectors)
    store.put_curated_version("v1", {"curated.jsonl": "{}\n"}, run_id="run-1", name="pool-curated")
    return store, vectors


def catalog_paths(store: Store) -> list[str]:
    return [p for sql in ("SELECT path FROM datasets", "SELECT DISTINCT shard FROM embeddings",
                          "SELECT path FROM curated_versions") for (p,) in store.query(sql)]


def test_the_catalog_names_files_relative_to_the_home(tmp_path):
    store, _ = filled_store(tmp_path / "home")
    paths = catalog_paths(store)
    assert sorted(Path(p).parts[0] for p in paths) == ["curated", "datasets", "embeddings"]
    assert all(not Path(p).is_absolute() and (store.home / p).exists() for p in paths), paths


def test_a_store_copied_elsewhere_works_there(tmp_path):
    """A store copied (or mounted) under another path opens without repairs and serves the same
    rows, vectors and versions, with the original gone: nothing in it names its old location."""
    old, vectors = filled_store(tmp_path / "old")
    hashes = old.get_rows("ds-1").column("content_hash").to_pylist()
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old")
    moved = Store(tmp_path / "new")
    assert moved.repairs == []
    assert moved.store_id == old.store_id  # the same store, so caches keyed on the id and place stay valid
    assert moved.get_rows("ds-1").equals(make_rows(["a", "b", "c"]))
    np.testing.assert_array_equal(moved.get_embeddings(hashes, "enc"), vectors)
    assert moved.missing_hashes(hashes, "enc") == []
    assert moved.latest_curated_version("pool-curated") == "v1"
    assert (moved.curated_dir("v1") / "curated.jsonl").is_file()
    assert not any(str(tmp_path / "old") in p for p in catalog_paths(moved))


def test_absolute_paths_of_an_earlier_writer_are_still_read_after_a_move(tmp_path):
    """Catalogs written before paths were relative hold absolute ones: moved, they still open clean."""
    old, vectors = filled_store(tmp_path / "old")
    hashes = old.get_rows("ds-1").column("content_hash").to_pylist()
    with old.catalog() as con:  # what the earlier layout wrote: the home's absolute path in front
        for table, column in (("datasets", "path"), ("embeddings", "shard"), ("curated_versions", "path")):
            con.execute(f"UPDATE {table} SET {column} = ? || '/' || {column}", [str(old.home.resolve())])
    assert all(Path(p).is_absolute() for p in catalog_paths(old))
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old")
    moved = Store(tmp_path / "new")
    assert moved.repairs == []
    np.testing.assert_array_equal(moved.get_embeddings(hashes, "enc"), vectors)
    moved.put_embeddings("enc", ["h-new"], np.ones((1, 8), np.float32))  # new rows beside the old ones
    assert moved.missing_hashes([*hashes, "h-new"], "enc") == []
