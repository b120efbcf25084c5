"""Stop the Prefect server that `sot` started when `sot` itself is killed.

With no server configured, Prefect runs its API as a child process (ephemeral mode) and stops it
at exit. `kill -9` of `sot` skips that exit, and the server would live on as an orphan. So `sot`
starts this watchdog: a bare Python process that notes its parent's API-server children while the
parent lives, and terminates them once the parent is gone. Linux only (it reads /proc).
"""
from __future__ import annotations

import os
import subprocess
import sys

SERVER_MARK = b"prefect.server.api.server"

_WATCH = r"""
import os, signal, sys, time
parent, mark, seen = int(sys.argv[1]), sys.argv[2].encode(), set()

def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""

def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None

while os.path.exists(f"/proc/{parent}"):
    seen |= {int(p) for p in os.listdir("/proc") if p.isdigit() and parent_of(p) == parent and mark in cmdline(p)}
    time.sleep(0.5)
for pid in seen:
    if mark in cmdline(pid):  # still that server, not a reused pid
        os.kill(pid, signal.SIGTERM)
"""


_started_for: int | None = None  # the pid whose watchdog runs (a forked child needs its own)


def start_watchdog() -> None:
    """Watch this process from a detached helper; a no-op off Linux or when a server is configured.

    One watchdog per process: it watches every server the process starts, for the process's life.
    A program that calls `sot`'s `main` many times (a notebook, the test suite) would otherwise
    gather one watchdog per call, each scanning /proc twice a second until the program exits.
    """
    global _started_for
    if not sys.platform.startswith("linux") or os.environ.get("PREFECT_API_URL") or _started_for == os.getpid():
        return
    _started_for = os.getpid()
    subprocess.Popen([sys.executable, "-c", _WATCH, str(os.getpid()), SERVER_MARK.decode()],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
