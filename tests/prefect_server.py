"""A real `prefect server` subprocess for the tests that need one (the integration suite, the
fault-injection suite): started on a free loopback port in its own session, awaited on its health
endpoint, and stopped with its children afterwards."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

BIN = Path(sys.executable).parent
# What Prefect's own client retries (PREFECT_CLIENT_RETRY_EXTRA_CODES aside): the server answers 503
# when SQLite is busy with another writer (a worker, a flow run), and the request is safe to repeat.
RETRY_STATUS = frozenset({429, 502, 503})


class RetryingTransport(httpx.HTTPTransport):
    """An httpx transport that repeats a request answered 429/502/503, with exponential backoff
    and jitter, as `prefect.client` does; the last answer is returned whatever it is."""

    def __init__(self, attempts: int = 6, **kwargs):
        super().__init__(**kwargs)
        self.attempts = attempts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.attempts):
            response = super().handle_request(request)
            if response.status_code not in RETRY_STATUS or attempt == self.attempts - 1:
                return response
            response.close()
            time.sleep(min(0.5 * 2 ** attempt, 8) * random.uniform(0.8, 1.2))
        raise AssertionError("unreachable")


def api_client(api_url: str, timeout: float = 30) -> httpx.Client:
    """An httpx client on a Prefect server's REST API that rides out its transient 503s."""
    return httpx.Client(base_url=api_url, timeout=timeout, transport=RetryingTransport())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server_process(home: Path, env: dict[str, str], port: int, *options: str,
                           timeout: float = 180) -> Iterator[str]:
    """Run ``prefect server start`` (plus `options`) from `home`, logging to ``home/server.log``;
    yield ``http://127.0.0.1:<port>`` once ``/api/health`` answers, or fail the test with the log."""
    url = f"http://127.0.0.1:{port}"
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                             *options], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its children only
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()
