"""A real Prefect server for the integration tests: temporary PREFECT_HOME, a free loopback port.

The server, the CLI calls and the workers are subprocesses; they get the API URL through the
environment built here (`prefect_env`), so this pytest process's own Prefect settings (the unit
tests' throwaway backend) are left alone.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCREENSHOTS = REPO / "tests" / "integration" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """Handle on the running server: its URL, the environment for subprocesses, REST helpers."""

    def __init__(self, url: str, env: dict[str, str], home: Path):
        self.url, self.api, self.env, self.home = url, f"{url}/api", env, home
        self.http = httpx.Client(base_url=self.api, timeout=30)

    def get(self, path: str) -> dict:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict | None = None):
        r = self.http.post(path, json=body or {})
        r.raise_for_status()
        return r.json()

    def prefect(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `prefect` CLI of this venv from the repository root."""
        proc = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=self.env, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ,
           "PREFECT_HOME": str(home),
           "PREFECT_API_URL": f"{url}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # Nightly schedules must not create runs during the test; runs are triggered by hand.
           "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
           "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    # No SOT_REPO: deployments find the code through the folder `prefect deploy` ran in (issue 16).
    for name in ("PREFECT_PROFILES_PATH", "SOT_HOME", "SOT_REPO"):
        env.pop(name, None)
    log = open(home / "server.log", "w")
    # The UI asks its API at PREFECT_UI_API_URL, which otherwise defaults to port 4200.
    server_env = {**{k: v for k, v in env.items() if k != "PREFECT_API_URL"}, "PREFECT_UI_API_URL": f"{url}/api"}
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=home, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the Prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield PrefectServer(url, env, home)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its children only
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="session")
def screenshot_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(folder under the pytest tmp dir, tests/integration/artifacts/) for UI screenshots."""
    tmp = tmp_path_factory.mktemp("screenshots")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return tmp, SCREENSHOTS
