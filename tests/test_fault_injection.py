"""Fault injection: real `sot` processes killed with SIGKILL at exact points, and a damaged store.

A failpoint (`sot_core.failpoints`, armed by ``SOT_FAILPOINT``) makes the `sot` process send itself
SIGKILL at a named point: a real ``kill -9`` of a real process, with no cleanup. After each kill
the next run must end where an uninterrupted run ends (same weights, same adapter tensors), redo
at most the unit of work that was interrupted (the rest of a shard's rows, the training steps
since the last checkpoint), and leave no debris: no temp files, no file the catalog does not
name, no catalog row naming a missing or unreadable file. Damage between runs (a deleted,
truncated or corrupted Parquet file, a removed catalog row, a read-only store) must be repaired
or refused with one line naming the file, never used and never a traceback.

The store is inspected with a read-only DuckDB connection of its own, not through `Store`, whose
first open repairs what it finds and would hide the debris the checks look for.

The default run kills mid-embed and damages the store in every listed way; the tests marked slow
kill one store's runs at every failpoint in turn (ingest, embed, costs, solve, publish and the
boundaries between them), kill a nightly run around its watermark move and a training run mid-step
and mid-checkpoint, and remove a stage folder under a cached result.

All runs share one Prefect API server (started once per module, without services or UI), which
saves the ~10 s an ephemeral server costs every `sot` process; each test keeps a private
PREFECT_HOME and result storage. Embedding uses batches of 8 and shards of 16 rows
(``SOT_EMBED_SHARD_ROWS``), so the 30-row fixture pool is stored in two shards.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from prefect_server import free_port, prefect_server_process

# Every test here starts real `sot` processes and kills them: minutes in all, so CI runs them
# with the slow lane (`pytest -m slow`).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
INPUTS = REPO / "tests" / "fixtures" / "store_v0" / "inputs"
SOT = [sys.executable, "-m", "sot_prefect.flows.cli"]
INPUT_ARGS = ["--pool", str(INPUTS / "pool.jsonl"), "--safe-anchor", str(INPUTS / "anchor.jsonl"),
              "--harmful-ref", str(INPUTS / "harm.jsonl")]
BATCH = ["--batch-size", "8"]
SHARD_ROWS = "16"
N_POOL, N_ANCHOR, N_HARM = 30, 12, 12
TEMP = re.compile(r"^\..+\.(tmp|tmp-.+)$")  # any temp name of sot_core.io, old or new


# --------------------------------------------------------------------------- running sot
@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    """One Prefect API server for the module's `sot` processes (no services, no UI)."""
    home = tmp_path_factory.mktemp("prefect_server")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, "PREFECT_HOME": str(home),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with prefect_server_process(home, env, free_port(), "--no-services", "--no-ui") as url:
        yield f"{url}/api"


class Sot:
    """Runs `sot` as a subprocess with a private PREFECT_HOME and result storage under `root`."""

    def __init__(self, root: Path, api_url: str):
        self.root = root
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SOT_"))}
        self.env = {**env, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(root / "prefect"),
                    "PREFECT_LOCAL_STORAGE_PATH": str(root / "results"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "SOT_EMBED_SHARD_ROWS": SHARD_ROWS}

    def run(self, *args: str, failpoint: str | None = None, prefix: list[str] | None = None,
            timeout: float = 420) -> subprocess.CompletedProcess:
        env = {**self.env, **({"SOT_FAILPOINT": failpoint} if failpoint else {})}
        return subprocess.run([*(prefix or []), *SOT, *map(str, args)], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=self.root)

    def ok(self, *args, **kw) -> subprocess.CompletedProcess:
        done = self.run(*args, **kw)
        assert done.returncode == 0, f"sot failed ({done.returncode}):\n{done.stderr[-4000:]}"
        return done

    def killed(self, point: str, *args, **kw) -> subprocess.CompletedProcess:
        """Run with the failpoint armed; check the process died by SIGKILL at that very point."""
        done = self.run(*args, failpoint=point, **kw)
        name = point.split("@")[0]
        assert done.returncode == -signal.SIGKILL and f"sot failpoint {name}: SIGKILL" in done.stderr, (
            f"expected a SIGKILL at {point}, got rc {done.returncode}:\n{done.stderr[-4000:]}")
        return done


def curate_args(home: Path, out: Path, *extra: str) -> list[str]:
    return ["curate", *INPUT_ARGS, *BATCH, "--home", home, "--out-dir", out, *extra]


def repairs(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("sot: store repair: ")]


def run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


# --------------------------------------------------------------------------- inspecting the store
def catalog(home: Path, sql: str, params: list | None = None) -> list[tuple]:
    """A query on the store's catalog through a read-only connection (no `Store`: it would repair)."""
    con = duckdb.connect(str(home / "catalog.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def shard_file(home: Path, shard: str) -> Path:
    return home / "embeddings" / Path(shard).parent.name / Path(shard).name


def debris(home: Path) -> list[str]:
    """Everything a clean store must not hold: temp files, files the catalog does not name, catalog
    rows naming a missing or unreadable file, incomplete stage folders."""
    found = [f"temp: {p}" for p in home.rglob("*") if TEMP.match(p.name)]
    datasets = dict(catalog(home, "SELECT dataset_id, n_rows FROM datasets"))
    for dataset_id, n_rows in datasets.items():
        path = home / "datasets" / f"{dataset_id}.parquet"
        try:
            if pq.read_table(path, page_checksum_verification=True).num_rows != n_rows:
                found.append(f"dataset with a wrong row count: {path}")
        except Exception as err:  # noqa: BLE001
            found.append(f"catalogued dataset unreadable: {path} ({err})")
    found += [f"dataset file not in the catalog: {p}" for p in (home / "datasets").glob("*.parquet")
              if p.stem not in datasets]
    shards = catalog(home, "SELECT shard, max(row_in_shard) FROM embeddings GROUP BY shard")
    for shard, top in shards:
        try:
            if pq.read_table(shard_file(home, shard), page_checksum_verification=True).num_rows <= top:
                found.append(f"shard shorter than its catalog rows: {shard}")
        except Exception as err:  # noqa: BLE001
            found.append(f"catalogued shard unreadable: {shard} ({err})")
    named = {shard_file(home, s) for s, _ in shards}
    found += [f"shard not in the catalog: {p}" for p in (home / "embeddings").glob("*/*.parquet") if p not in named]
    versions = dict(catalog(home, "SELECT version, path FROM curated_versions"))
    found += [f"curated version without its file: {v}" for v, p in versions.items()
              if not (home / "curated" / Path(p).name / "curated.jsonl").is_file()]
    if (home / "curated").is_dir():
        found += [f"curated folder not in the catalog: {p}" for p in (home / "curated").iterdir()
                  if p.name not in versions]
    for stage, mark in (("costs", "done"), ("solve", "diagnostics.json")):
        folder = home / "stages" / stage
        found += [f"incomplete {stage} stage: {p}" for p in (folder.iterdir() if folder.is_dir() else [])
                  if not (p / mark).is_file()]
    return found


def vectors_stored(home: Path) -> tuple[int, int]:
    """(rows in shard files, rows the catalog indexes): equal when no row was embedded twice."""
    in_files = sum(pq.read_metadata(p).num_rows for p in (home / "embeddings").glob("*/*.parquet"))
    return in_files, catalog(home, "SELECT count(*) FROM embeddings")[0][0]


def assert_same_result(out: Path, reference: Path) -> None:
    """weights.parquet and curated.jsonl of `out` equal the uninterrupted run's (within 1e-6)."""
    got, want = (pq.read_table(d / "weights.parquet").to_pydict() for d in (out, reference))
    assert got["id"] == want["id"] and got["selected"] == want["selected"]
    for column in ("weight", "score", "train_weight"):
        np.testing.assert_allclose(got[column], want[column], rtol=0, atol=1e-6, err_msg=column)
    rows = [[json.loads(line) for line in (d / "curated.jsonl").read_text().splitlines()] for d in (out, reference)]
    assert [r["id"] for r in rows[0]] == [r["id"] for r in rows[1]]
    np.testing.assert_allclose([r["weight"] for r in rows[0]], [r["weight"] for r in rows[1]], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, api_url):
    """An uninterrupted curation of the fixture inputs: (home, out)."""
    root = tmp_path_factory.mktemp("reference")
    home, out = root / "home", root / "out"
    Sot(root, api_url).ok(*curate_args(home, out))
    info = run_json(out)
    assert info["counts"]["embedded_now"] == {"pool": N_POOL, "safe_anchor": N_ANCHOR, "harmful_ref": N_HARM}
    assert len(list((home / "embeddings").glob("*/*.parquet"))) == 4  # pool in two shards of 16 and 14 rows
    assert debris(home) == []
    return home, out


def copy_store(reference_home: Path, to: Path, stages: bool = True) -> Path:
    """A copy of the reference store; without its stage outputs when `stages` is False, so the next
    run computes costs from the stored vectors again (and so uses whatever it embedded again)."""
    shutil.copytree(reference_home, to, ignore=None if stages else shutil.ignore_patterns("stages"))
    return to


def pool_shards(home: Path) -> list[str]:
    """The pool's shards, in the order they were written."""
    (pool_id,) = catalog(home, "SELECT dataset_id FROM datasets WHERE name = 'pool'")[0]
    return [s for (s,) in catalog(home, "SELECT e.shard FROM rows r JOIN embeddings e USING (content_hash) "
                                        "WHERE r.dataset_id = ? GROUP BY e.shard ORDER BY min(e.created_at)",
                                  [pool_id])]


# =========================================================================== kills
def test_kill_mid_embed_keeps_the_finished_shard(tmp_path, api_url, reference):
    """Killed after the pool's first shard: the rerun embeds only the other 14 pool rows."""
    sot, home, out = Sot(tmp_path, api_url), tmp_path / "home", tmp_path / "out"
    sot.killed("embed.after_shard@1", *curate_args(home, out))
    assert catalog(home, "SELECT count(*) FROM embeddings") == [(16,)]
    sot.ok(*curate_args(home, out))
    assert run_json(out)["counts"]["embedded_now"] == {"pool": N_POOL - 16, "safe_anchor": N_ANCHOR,
                                                       "harmful_ref": N_HARM}
    assert vectors_stored(home) == (N_POOL + N_ANCHOR + N_HARM,) * 2  # no row embedded twice
    assert debris(home) == []
    assert_same_result(out, reference[1])


def test_kill_between_shard_and_catalog_leaves_nothing_behind(tmp_path, api_url, reference):
    """Killed after a shard is renamed into place but before its catalog rows commit: the next
    run removes the unnamed shard (one line naming it) and embeds those 16 rows again, no more."""
    sot, home, out = Sot(tmp_path, api_url), tmp_path / "home", tmp_path / "out"
    sot.killed("embed.before_catalog@1", *curate_args(home, out))
    (orphan,) = (home / "embeddings").glob("*/*.parquet")
    assert catalog(home, "SELECT count(*) FROM embeddings") == [(0,)]
    done = sot.ok(*curate_args(home, out))
    assert any(str(orphan) in line and "removed" in line for line in repairs(done)), done.stderr
    assert run_json(out)["counts"]["embedded_now"]["pool"] == N_POOL
    assert vectors_stored(home) == (N_POOL + N_ANCHOR + N_HARM,) * 2
    assert debris(home) == []
    assert_same_result(out, reference[1])


# =========================================================================== damage between runs
def test_deleted_and_truncated_shards_are_embedded_again(tmp_path, api_url, reference):
    """One pool shard deleted, the anchor's shard truncated: both are detected at the next run's
    start (one line each, naming the file), their catalog rows dropped, and exactly their rows
    embedded again."""
    home = copy_store(reference[0], tmp_path / "home", stages=False)
    first, _ = pool_shards(home)
    shard_file(home, first).unlink()
    (anchor_id,) = catalog(home, "SELECT dataset_id FROM datasets WHERE name = 'safe_anchor'")[0]
    (anchor_shard,) = catalog(home, "SELECT DISTINCT e.shard FROM rows r JOIN embeddings e USING (content_hash) "
                                    "WHERE r.dataset_id = ?", [anchor_id])[0]
    path = shard_file(home, anchor_shard)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    done = Sot(tmp_path, api_url).ok(*curate_args(home, tmp_path / "out"))
    lines = repairs(done)
    assert any(str(shard_file(home, first)) in line and "is missing" in line for line in lines), done.stderr
    assert any(str(path) in line and "is unreadable" in line for line in lines), done.stderr
    assert run_json(tmp_path / "out")["counts"]["embedded_now"] == {"pool": 16, "safe_anchor": N_ANCHOR,
                                                                   "harmful_ref": 0}
    assert debris(home) == []
    assert_same_result(tmp_path / "out", reference[1])


def test_corrupted_page_in_a_shard_is_never_used(tmp_path, api_url, reference):
    """A flipped byte inside a shard's data (its footer intact, so it opens) fails the page
    checksum when read: the run stops with one line naming the shard and drops its rows; the run
    after that embeds them again and ends with the reference weights."""
    home = copy_store(reference[0], tmp_path / "home", stages=False)
    path = shard_file(home, pool_shards(home)[1])
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    sot, out = Sot(tmp_path, api_url), tmp_path / "out"
    done = sot.run(*curate_args(home, out))
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sot: error: ") and str(path) in last and "run again" in last, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not (out / "weights.parquet").exists()
    sot.ok(*curate_args(home, out))
    assert run_json(out)["counts"]["embedded_now"]["pool"] == N_POOL - 16
    assert debris(home) == []
    assert_same_result(out, reference[1])


def test_lost_dataset_file_is_stored_again_despite_the_task_cache(tmp_path, api_url, reference):
    """The pool's dataset file truncated after a run whose ingest result Prefect has cached: the
    store drops the dataset and changes its id, so the cached ingest is not served and the run
    stores the pool again from its source; nothing is embedded again."""
    home = copy_store(reference[0], tmp_path / "home")
    sot = Sot(tmp_path, api_url)
    sot.ok(*curate_args(home, tmp_path / "warm"))
    assert list((home / "prefect-results").glob("ingest-*"))  # the ingest result is cached in the store
    (pool_id,) = catalog(home, "SELECT dataset_id FROM datasets WHERE name = 'pool'")[0]
    path = home / "datasets" / f"{pool_id}.parquet"
    path.write_bytes(path.read_bytes()[:100])
    store_id = (home / "store_id").read_text()
    done = sot.ok(*curate_args(home, tmp_path / "out"))
    assert any(str(path) in line and "dropped it from the catalog" in line for line in repairs(done)), done.stderr
    info = run_json(tmp_path / "out")
    assert "ingest" not in info["cached_stages"] and info["inputs"]["pool"]["stored"] is True
    assert info["counts"]["embedded_now"] == {"pool": 0, "safe_anchor": 0, "harmful_ref": 0}
    assert (home / "store_id").read_text() != store_id
    assert debris(home) == []
    assert_same_result(tmp_path / "out", reference[1])


def test_removed_catalog_rows_are_repaired(tmp_path, api_url, reference):
    """Catalog rows removed while the files stay: the harmful reference's datasets row (its file is
    registered again from its content, keeping its id) and every embeddings row of the pool's
    second shard (the shard, now named by no row, is removed and its 14 rows embedded again)."""
    home = copy_store(reference[0], tmp_path / "home", stages=False)
    (harm_id,) = catalog(home, "SELECT dataset_id FROM datasets WHERE name = 'harmful_ref'")[0]
    second = pool_shards(home)[1]
    con = duckdb.connect(str(home / "catalog.duckdb"))
    try:
        con.execute("DELETE FROM datasets WHERE dataset_id = ?", [harm_id])
        con.execute("DELETE FROM embeddings WHERE shard = ?", [second])
    finally:
        con.close()
    harm_file = home / "datasets" / f"{harm_id}.parquet"
    inode = harm_file.stat().st_ino
    done = Sot(tmp_path, api_url).ok(*curate_args(home, tmp_path / "out"))
    lines = repairs(done)
    assert any(str(harm_file) in line and "registered it" in line for line in lines), done.stderr
    assert any(str(shard_file(home, second)) in line and "removed" in line for line in lines), done.stderr
    info = run_json(tmp_path / "out")
    assert info["inputs"]["harmful_ref"]["dataset_id"] == harm_id and info["inputs"]["harmful_ref"]["stored"] is False
    assert harm_file.stat().st_ino == inode  # registered again, not written again
    assert catalog(home, "SELECT name FROM datasets WHERE dataset_id = ?", [harm_id]) == [("harmful_ref",)]
    assert info["counts"]["embedded_now"] == {"pool": N_POOL - 16, "safe_anchor": 0, "harmful_ref": 0}
    assert debris(home) == []
    assert_same_result(tmp_path / "out", reference[1])


def read_only_prefix(home: Path) -> list[str] | None:
    """A command prefix that runs `sot` with `home` read-only. As root (whom file modes do not
    stop) a read-only bind mount in a private mount namespace; else None (use file modes)."""
    if os.geteuid() != 0:
        return None
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("running as root without mount namespaces: cannot make a folder read-only")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(home)]


def test_read_only_store_is_refused_with_one_line(tmp_path, api_url, reference):
    """A store that cannot be written is refused before any work, with one line naming it; nothing
    in it changes."""
    home = copy_store(reference[0], tmp_path / "home")
    before = {p: p.stat().st_mtime_ns for p in home.rglob("*")}
    prefix = read_only_prefix(home)
    if prefix is None:
        for p in [home, *home.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
    try:
        done = Sot(tmp_path, api_url).run(*curate_args(home, tmp_path / "out"), prefix=prefix)
    finally:
        for p in [home, *home.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(rf"sot: error: {re.escape(str(home))}\S*: the store is read-only", last), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert {p: p.stat().st_mtime_ns for p in home.rglob("*")} == before  # nothing written


# =========================================================================== slow: every kill point in turn
def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def test_a_run_killed_at_every_point_in_turn_ends_like_an_uninterrupted_one(tmp_path, api_url, reference):
    """One store, eleven `sot curate` processes: each but the last is killed at the next point
    (inside ingest, embed, costs, solve and publish, and at the boundaries between them). Each run
    first checks that the one before it is recovered without redoing finished work; the last
    publishes the reference weights and leaves a clean store."""
    sot, home, out = Sot(tmp_path, api_url), tmp_path / "home", tmp_path / "out"
    args = curate_args(home, out)

    # 1. inside ingest: the anchor's file is in place, its catalog rows are not
    sot.killed("ingest.before_catalog@2", *args)
    stored = {name: dataset_id for dataset_id, name in catalog(home, "SELECT dataset_id, name FROM datasets")}
    assert list(stored) == ["pool"]
    (anchor_file,) = [p for p in (home / "datasets").glob("*.parquet") if p.stem != stored["pool"]]
    inodes = {p.name: p.stat().st_ino for p in (home / "datasets").glob("*.parquet")}

    # 2. the anchor file is registered again (not written again); killed after the pool's first shard
    done = sot.killed("embed.after_shard@1", *args)
    assert any(str(anchor_file) in line and "registered it" in line for line in repairs(done)), done.stderr
    assert {p.name: p.stat().st_ino for p in (home / "datasets").glob("*.parquet") if p.name in inodes} == inodes
    assert catalog(home, "SELECT count(*) FROM datasets") == [(3,)]
    assert catalog(home, "SELECT count(*) FROM embeddings") == [(16,)]

    # 3. inside embed: the second pool shard is in place, its catalog rows are not
    sot.killed("embed.before_catalog@1", *args)
    assert catalog(home, "SELECT count(*) FROM embeddings") == [(16,)]
    named = {shard_file(home, s) for (s,) in catalog(home, "SELECT DISTINCT shard FROM embeddings")}
    (orphan,) = [p for p in (home / "embeddings").glob("*/*.parquet") if p not in named]

    # 4. the unnamed shard is removed and only its 14 rows embedded again; killed after the anchor's embedding
    done = sot.killed("embed.after_dataset@2", *args)
    assert any(str(orphan) in line and "removed" in line for line in repairs(done)), done.stderr
    assert not orphan.exists()
    assert vectors_stored(home) == (N_POOL + N_ANCHOR,) * 2

    # 5. inside costs: the anchor's cost matrix is written in the stage's temp folder
    sot.killed("costs.after_anchor", *args)
    assert vectors_stored(home) == (N_POOL + N_ANCHOR + N_HARM,) * 2
    assert not list((home / "stages" / "costs").glob("*/done"))

    # 6. the temp folder is removed; killed at the costs -> solve boundary
    done = sot.killed("costs.done", *args)
    assert any("temp file(s) of killed runs" in line for line in repairs(done)), done.stderr
    (costs_done,) = (home / "stages" / "costs").glob("*/done")
    costs_at = mtime(costs_done)

    # 7. the costs are found, not computed again; killed inside solve
    sot.killed("solve.before_rename", *args)
    assert mtime(costs_done) == costs_at and not list((home / "stages" / "solve").glob("*/diagnostics.json"))

    # 8. killed at the solve -> publish boundary
    done = sot.killed("solve.done", *args)
    assert any("temp file(s) of killed runs" in line for line in repairs(done)), done.stderr
    (solved,) = (home / "stages" / "solve").glob("*/diagnostics.json")
    solved_at = mtime(solved)

    # 9. inside publish: the out folder written, no curated version recorded
    sot.killed("publish.before_record", *args)
    assert (out / "weights.parquet").exists() and catalog(home, "SELECT count(*) FROM curated_versions") == [(0,)]

    # 10. inside publish: the version recorded (files and row together), run.json not written
    sot.killed("publish.after_record", *args)
    ((first_version,),) = catalog(home, "SELECT version FROM curated_versions")
    assert (home / "curated" / first_version / "curated.jsonl").is_file() and not (out / "run.json").exists()

    # 11. uninterrupted: nothing embedded or computed again, a second version whose parent is the first
    sot.ok(*args)
    info = run_json(out)
    assert info["counts"]["embedded_now"] == {"pool": 0, "safe_anchor": 0, "harmful_ref": 0}
    assert {"ingest", "costs", "solve"} <= set(info["cached_stages"])
    assert mtime(costs_done) == costs_at and mtime(solved) == solved_at
    assert info["parent_version"] == first_version
    assert {p.name: p.stat().st_ino for p in (home / "datasets").glob("*.parquet") if p.name in inodes} == inodes
    assert vectors_stored(home) == (N_POOL + N_ANCHOR + N_HARM,) * 2
    assert debris(home) == []
    assert not [p for p in out.iterdir() if TEMP.match(p.name)]
    assert_same_result(out, reference[1])


def test_removed_stage_output_under_a_cached_result_stops_once_then_recomputes(tmp_path, api_url, reference):
    """The solve folder deleted while Prefect still caches the result that names it: the run stops
    with one line naming the folder (no traceback) and resets the caches; the next run computes the
    stage again and publishes the reference weights."""
    home = copy_store(reference[0], tmp_path / "home")
    sot = Sot(tmp_path, api_url)
    sot.ok(*curate_args(home, tmp_path / "warm"))
    (solve_dir,) = (home / "stages" / "solve").iterdir()
    shutil.rmtree(solve_dir)
    done = sot.run(*curate_args(home, tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sot: error: {solve_dir}: ") and "run again" in last, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    sot.ok(*curate_args(home, tmp_path / "out"))
    assert "solve" not in run_json(tmp_path / "out")["cached_stages"]
    assert debris(home) == []
    assert_same_result(tmp_path / "out", reference[1])


# =========================================================================== slow: nightly commit
def incoming_rows(n: int = 6) -> list[dict]:
    """Demo rows that are not in the fixture pool: a night's new data."""
    taken = {json.loads(line)["id"] for line in (INPUTS / "pool.jsonl").read_text().splitlines()}
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "pool.jsonl").read_text().splitlines()]
    return [r for r in rows if r["id"] not in taken][:n]


def test_nightly_killed_around_the_watermark_move(tmp_path, api_url, reference):
    """Killed after publishing but before the batch commit, the watermark stays: the rerun takes the
    same batch again (embedding nothing again). Killed right after the commit, the batch counts as
    consumed: the next run is a no-op. The published weights equal an uninterrupted night's."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "night-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in incoming_rows()))

    def nightly(home: Path, out: Path) -> list[str]:
        return ["nightly", "--incoming", incoming, "--base-pool", INPUTS / "pool.jsonl", "--safe-anchor",
                INPUTS / "anchor.jsonl", "--harmful-ref", INPUTS / "harm.jsonl", "--name", "night", *BATCH,
                "--home", home, "--out-dir", out]

    sot = Sot(tmp_path, api_url)
    clean_home, clean_out = copy_store(reference[0], tmp_path / "clean"), tmp_path / "clean-out"
    sot.ok(*nightly(clean_home, clean_out))

    home, out = copy_store(reference[0], tmp_path / "home"), tmp_path / "out"
    sot.killed("nightly.before_commit", *nightly(home, out))
    assert catalog(home, "SELECT count(*) FROM incoming_batches") == [(0,)]
    assert catalog(home, "SELECT count(*) FROM curated_versions WHERE name = 'night'") == [(1,)]

    sot.killed("nightly.after_commit", *nightly(home, out))
    info = run_json(out)
    assert info["counts"]["embedded_now"]["pool"] == 0  # the batch was embedded by the killed run
    assert catalog(home, "SELECT seq, n_rows FROM incoming_batches WHERE name = 'night'") == [(1, 6)]
    assert_same_result(out, clean_out)

    done = sot.ok(*nightly(home, out))
    assert "nothing new since batch 1" in done.stdout
    assert catalog(home, "SELECT count(*) FROM curated_versions WHERE name = 'night'") == [(2,)]
    assert catalog(home, "SELECT count(*) FROM incoming_batches") == [(1,)]
    assert debris(home) == []


# =========================================================================== slow: training
def test_training_killed_resumes_from_its_last_checkpoint(tmp_path, api_url):
    """64 steps of LoRA training on a tiny random model, checkpointed at step 50. Killed while
    writing the step-50 checkpoint, the rerun starts over (the half checkpoint is removed, never
    loaded); that run killed at step 57, the next resumes from step 50 and runs 14 steps. It ends
    with the adapter tensors of an uninterrupted run."""
    from safetensors.numpy import load_file
    from test_train import make_tiny_model, write_curated

    model = make_tiny_model(tmp_path / "tiny")
    curated = write_curated(tmp_path / "curated.jsonl")
    sot = Sot(tmp_path, api_url)

    def finetune(out: Path) -> list:
        return ["finetune", "--no-eval", "--curated", curated, "--base-model", model, "--out-dir", out,
                "--epochs", "8", "--batch-size", "1"]

    def adapter(out: Path) -> tuple[dict, dict]:
        folder = out / "lora" / "adapter"
        return load_file(str(folder / "adapter_model.safetensors")), json.loads((folder / "manifest.json").read_text())

    sot.ok(*finetune(tmp_path / "clean"))
    want, manifest = adapter(tmp_path / "clean")
    assert (manifest["steps"], manifest["resumed_from_step"]) == (64, 0)

    out = tmp_path / "killed"
    checkpoints = out / "lora" / "checkpoints"
    sot.killed("train.checkpoint@1", *finetune(out))
    (half,) = checkpoints.iterdir()
    assert TEMP.match(half.name)  # the step-50 checkpoint, still under its temp name

    sot.killed("train.after_step@57", *finetune(out))
    assert [p.name for p in checkpoints.iterdir()] == ["step-0000050"]  # the half one removed, a whole one written

    sot.ok(*finetune(out))
    got, manifest = adapter(out)
    assert (manifest["steps"], manifest["resumed_from_step"], manifest["steps_this_run"]) == (64, 50, 14)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)
    assert not [p for p in out.rglob("*") if TEMP.match(p.name)]
    assert not checkpoints.exists()
