"""`sot` as a real process: bad option values stop it before any work, a kill -9 leaves no
orphan Prefect server behind, and cached task results are plain JSON (nothing is unpickled)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sot_prefect.flows.watchdog import SERVER_MARK

REPO = Path(__file__).resolve().parent.parent
INPUTS = REPO / "tests" / "fixtures" / "store_v0" / "inputs"
SOT = [sys.executable, "-m", "sot_prefect.flows.cli"]
SMALL = ["--pool", str(INPUTS / "pool.jsonl"), "--safe-anchor", str(INPUTS / "anchor.jsonl"),
         "--harmful-ref", str(INPUTS / "harm.jsonl")]


def sot_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results")}


@pytest.mark.parametrize("flag,value,message", [
    ("--lam", "inf", "argument --lam: must be a finite number"),
    ("--eps", "nan", "argument --eps: must be a finite number"),
    ("--knn", "0", "argument --knn: must be >= 1, got 0"),
    ("--keep", "1.5", "argument --keep: must be <= 1, got 1.5"),
    ("--refusal-share", "1", "argument --refusal-share: must be < 1"),
    ("--mode", "pushpull", "argument --mode: invalid choice"),
    ("--name", "../../../../tmp/x", "argument --name: must match"),
    ("--name", ".hidden", "argument --name: must match"),
])
def test_bad_option_values_stop_before_any_work(tmp_path, flag, value, message):
    home = tmp_path / "home"
    done = subprocess.run([*SOT, "curate", *SMALL, "--home", str(home), "--out-dir", str(tmp_path / "out"), flag, value],
                          capture_output=True, text=True, env=sot_env(tmp_path), timeout=120)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]
    assert not home.exists() and not (tmp_path / "out").exists()


def server_children(pid: int) -> list[int]:
    """Prefect API servers whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid and SERVER_MARK in cmd:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_sot_leaves_no_orphan_prefect_server(tmp_path):
    proc = subprocess.Popen([*SOT, "curate", *SMALL, "--home", str(tmp_path / "home"), "--out-dir", str(tmp_path / "out")],
                            env=sot_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, servers = time.time() + 120, []
        while not servers and time.time() < deadline and proc.poll() is None:
            servers = server_children(proc.pid)
            time.sleep(0.2)
        assert servers, "sot never started its ephemeral Prefect server"
        time.sleep(1.0)  # the watchdog polls every 0.5 s
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 20
        while any(alive(s) for s in servers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(s) for s in servers), "the Prefect server outlived sot"
    finally:
        if proc.poll() is None:
            proc.kill()


def watchdogs_of(pid: int) -> list[int]:
    """Processes running flows/watchdog.py's script for `pid` (its argv: python -c SCRIPT PID MARK)."""
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 4 and argv[1] == b"-c" and argv[3] == str(pid).encode() \
                and argv[4] == SERVER_MARK:
            found.append(int(p))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_process_gets_one_watchdog_however_often_it_calls_sot():
    """`main` called again and again in one process (a notebook, this test suite) starts one watchdog,
    not one per call: each scans /proc twice a second for as long as the process lives."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from sot_prefect.flows import watchdog\n"
                              "for _ in range(3): watchdog.start_watchdog()\nprint('ready', flush=True); time.sleep(30)"],
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert len(watchdogs_of(child.pid)) == 1
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_cached_task_results_are_plain_json(tmp_path):
    args = [*SOT, "curate", *SMALL, "--home", str(tmp_path / "home")]
    for run in ("first", "second"):
        done = subprocess.run([*args, "--out-dir", str(tmp_path / run)], capture_output=True, text=True,
                              env=sot_env(tmp_path), timeout=300)
        assert done.returncode == 0, done.stderr
    records = sorted((tmp_path / "home" / "prefect-results").iterdir())  # tasks/ops.py RESULTS_FOLDER
    assert {r.name.split("-")[0] for r in records} == {"ingest", "embed", "costs", "solve", "budget"}
    for record in records:
        stored = json.loads(record.read_bytes())
        assert stored["metadata"]["serializer"]["type"] == "json"
        assert stored["metadata"]["serializer"]["object_decoder"] is None
        assert isinstance(json.loads(stored["result"]), dict)
    second = json.loads((tmp_path / "second" / "run.json").read_text())
    assert set(second["cached_stages"]) == {"ingest", "costs", "solve"}


@pytest.mark.slow
def test_a_copied_store_is_not_served_the_originals_cached_results(tmp_path):
    """Cached results name files under the store; a copy (same store id) must compute its own."""
    env = sot_env(tmp_path)
    first = subprocess.run([*SOT, "curate", *SMALL, "--home", str(tmp_path / "home"), "--out-dir", str(tmp_path / "a")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    shutil.copytree(tmp_path / "home", tmp_path / "copy")
    again = subprocess.run([*SOT, "curate", *SMALL, "--home", str(tmp_path / "copy"), "--out-dir", str(tmp_path / "b")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["cached_stages"] == []


@pytest.mark.slow
def test_an_unwritable_output_folder_fails_in_one_line(tmp_path):
    out = tmp_path / "file-not-folder"
    out.write_text("a file where the output folder should be")
    done = subprocess.run([*SOT, "curate", *SMALL, "--home", str(tmp_path / "home"), "--out-dir", str(out / "run")],
                          capture_output=True, text=True, env=sot_env(tmp_path), timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("sot: error: ")
    assert str(out) in done.stderr and "Traceback" not in done.stderr
