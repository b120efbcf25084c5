"""scripts/serve.sh as an operator runs it (issue 16): its own server, pools, deployments and alerts; the worker
is supervised (kill -9 it: the server stays up, a new worker starts, the running flow run finishes); a flow
run whose process is killed is reported Crashed with the cause, and the alert webhook hears of it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from integration.conftest import api_client, free_port
from integration.test_deployments import REPO, demo_rows, write_jsonl
from integration.test_operations import Webhook

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


class Served:
    def __init__(self, tmp: Path, hook: Webhook):
        self.port, self.tmp = free_port(), tmp
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SOT_"))}
        self.env.update({"SOT_PORT": str(self.port), "PREFECT_HOME": str(tmp / "prefect"), "SOT_HOME": str(tmp / "store"),
                         "SOT_LOGS": str(tmp / "logs"), "SOT_ALERT_WEBHOOK": hook.url, "SOT_GPU_WORKER": "0",
                         "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                         "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
        self.out = open(tmp / "serve.out", "w+")
        self.proc = subprocess.Popen(["bash", "scripts/serve.sh"], cwd=REPO, env=self.env, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.http = api_client(self.api)

    def output(self) -> str:
        self.out.flush()
        return (self.tmp / "serve.out").read_text()

    def wait_line(self, text: str, count: int = 1, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while self.output().count(text) < count:
            assert self.proc.poll() is None, f"serve.sh exited:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} x{count} from serve.sh:\n{self.output()[-3000:]}"
            time.sleep(1)
        return self.output()

    def worker_pid(self, nth: int) -> int:
        lines = [line for line in self.output().splitlines() if "worker for sot-process started (pid " in line]
        return int(lines[nth - 1].split("(pid ")[1].split(",")[0])

    def healthy(self) -> bool:
        try:
            return self.http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def run(self, tmp_name: str, rows: int = 60) -> str:
        pool = write_jsonl(self.tmp / f"{tmp_name}.jsonl", demo_rows(0, rows, tmp_name))
        dep = self.http.get("/deployments/name/curate-dataset/curate-dataset").json()
        body = {"parameters": {"pool": str(pool), "out_dir": str(self.tmp / tmp_name), "name": tmp_name,
                               "labels": None}}
        return self.http.post(f"/deployments/{dep['id']}/create_flow_run", json=body).json()["id"]

    def state(self, run_id: str) -> dict:
        return self.http.get(f"/flow_runs/{run_id}").json()["state"]

    def wait_state(self, run_id: str, types: tuple[str, ...], timeout: float = 400) -> dict:
        deadline = time.monotonic() + timeout
        while (state := self.state(run_id))["type"] not in types:
            assert time.monotonic() < deadline, f"run {run_id} still {state}"
            time.sleep(1)
        return state

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C: the supervisor stops its worker
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # fails the test below: serve.sh must stop on Ctrl-C
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        subprocess.run(["bash", "scripts/serve.sh", "stop"], cwd=REPO, env=self.env, timeout=60)
        self.out.close()


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead and not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_process(run_id: str) -> int:
    """The pid of the process executing flow run `run_id` (its environment names the run)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"PREFECT__FLOW_RUN_ID={run_id}".encode() in (proc / "environ").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no process runs flow run {run_id}")


def test_serve_sh_supervises_the_worker_and_reports_crashed_runs(tmp_path):
    hook = Webhook()
    served = Served(tmp_path, hook)
    try:
        served.wait_line("worker for sot-process started", timeout=600)
        dep = served.http.get("/deployments/name/curate-dataset/curate-dataset").json()
        assert dep["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)

        # A run is started; the worker is killed under it: the server and the run live on, a new worker comes.
        survivor = served.run("survivor", rows=200)
        served.wait_state(survivor, ("RUNNING",))
        os.kill(served.worker_pid(1), signal.SIGKILL)
        served.wait_line("worker for sot-process started", count=2, timeout=60)
        assert served.healthy()
        state = served.wait_state(survivor, ("COMPLETED", "FAILED", "CRASHED"))
        assert state["type"] == "COMPLETED", state
        assert "BrokenPipeError" not in served.output()

        # A run's own process is killed: its (restarted) worker reports it Crashed with the cause.
        victim = served.run("victim", rows=200)
        served.wait_state(victim, ("RUNNING",))
        time.sleep(3)
        os.kill(run_process(victim), signal.SIGKILL)
        state = served.wait_state(victim, ("CRASHED", "FAILED", "COMPLETED"), timeout=120)
        assert state["type"] == "CRASHED", state
        assert "-9" in state["message"] or "SIGKILL" in state["message"], state["message"]
        call = hook.wait_for("SOT run crashed")
        assert "SIGKILL" in call["body"] or "-9" in call["body"]
    finally:
        workers = [served.worker_pid(n + 1) for n in range(served.output().count("worker for sot-process started"))]
        served.stop()
        hook.server.shutdown()
    assert served.proc.returncode is not None and not served.healthy()
    alive = [pid for pid in workers if running(pid)]
    for pid in alive:  # never leave a worker polling behind
        os.kill(pid, signal.SIGKILL)
    assert alive == [], "Ctrl-C on serve.sh left its worker running"
