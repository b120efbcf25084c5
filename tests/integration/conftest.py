"""A real Prefect server for the integration tests: temporary PREFECT_HOME, a free loopback port.

The server, the CLI calls and the workers are subprocesses; they get the API URL through the
environment built here (`prefect_env`), so this pytest process's own Prefect settings (the unit
tests' throwaway backend) are left alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect_server import api_client, free_port, prefect_server_process  # noqa: F401  (free_port: test_serve)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCREENSHOTS = REPO / "tests" / "integration" / "artifacts"


class PrefectServer:
    """Handle on the running server: its URL, the environment for subprocesses, REST helpers."""

    def __init__(self, url: str, env: dict[str, str], home: Path):
        self.url, self.api, self.env, self.home = url, f"{url}/api", env, home
        self.http = api_client(self.api)

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
    # The UI asks its API at PREFECT_UI_API_URL, which otherwise defaults to port 4200.
    server_env = {**{k: v for k, v in env.items() if k != "PREFECT_API_URL"}, "PREFECT_UI_API_URL": f"{url}/api"}
    with prefect_server_process(home, server_env, port, timeout=120):
        yield PrefectServer(url, env, home)


@pytest.fixture(scope="session")
def screenshot_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(folder under the pytest tmp dir, tests/integration/artifacts/) for UI screenshots."""
    tmp = tmp_path_factory.mktemp("screenshots")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return tmp, SCREENSHOTS
