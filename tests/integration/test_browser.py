"""The Prefect UI as an operator uses it (issue 16), in headless Chromium driven over the DevTools protocol:
open the curate deployment's run form, submit it, let a worker run the flow, then read the run's logs and
artifacts pages. Skips when Chromium is not installed (CI installs it, see .ci/run)."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from integration.test_deployments import demo_rows, deployment, write_jsonl
from integration.test_operations import ended, ops, run_worker  # noqa: F401  (ops: the deployed fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


class Chromium:
    """One headless Chromium page, driven with DevTools protocol commands over its websocket."""

    def __init__(self, binary: str, profile: Path):
        from websockets.sync.client import connect

        self.proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--disable-background-networking", "--disable-component-update",
                                      "--window-size=1400,1000", "--remote-debugging-port=0",
                                      f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        page = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page")
        self.ws, self.next_id = connect(page["webSocketDebuggerUrl"], max_size=None), 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_text(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            body = self.js("document.body ? document.body.innerText : ''") or ""
            if text in body:
                return body
            assert time.monotonic() < deadline, f"{text!r} not on {self.js('location.href')}:\n{body[-2000:]}"
            time.sleep(0.5)

    def click(self, text: str) -> None:
        """Click the innermost element that reads exactly `text` (a button, a tab, a link)."""
        clicked = self.js(f"""(() => {{
            const hits = [...document.querySelectorAll("body *")]
                .filter(e => e.offsetParent !== null && e.innerText && e.innerText.trim() === {json.dumps(text)});
            const el = hits[hits.length - 1];
            if (el) {{ el.click(); return true; }} return false; }})()""")
        assert clicked, f"nothing reading {text!r} on {self.js('location.href')}"

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        subprocess.run(["pkill", "-P", str(self.proc.pid)], check=False)  # its own helper processes only


def test_run_form_submit_then_logs_and_artifacts_pages(ops, tmp_path):  # noqa: F811
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    server, _, work = ops
    dep = deployment(server, "curate-dataset", "curate-dataset")
    # The form starts from the deployment's parameters: point them at a small pool for a quick run.
    pool = write_jsonl(work / "browser-pool.jsonl", demo_rows(0, 60, "[browser]"))
    params = {**dep["parameters"], "pool": str(pool), "out_dir": str(work / "browser-out"),
              "home": str(work / "home"), "name": "browser"}
    server.http.patch(f"/deployments/{dep['id']}", json={"parameters": params}).raise_for_status()
    before = {r["id"] for r in server.post("/flow_runs/filter", {})}
    browser = Chromium(binary, tmp_path / "profile")
    try:
        browser.open(f"{server.url}/deployments/deployment/{dep['id']}/run")
        browser.wait_text("keep")  # the typed form, with the parameters' titles
        browser.click("Submit")
        deadline = time.monotonic() + 60
        while not (new := [r for r in server.post("/flow_runs/filter", {}) if r["id"] not in before]):
            assert time.monotonic() < deadline, "submitting the form created no flow run"
            time.sleep(1)
        run_id = new[0]["id"]
        output = run_worker(server)
        run = ended(server, run_id)
        assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{output[-3000:]}"
        browser.open(f"{server.url}/runs/flow-run/{run_id}")
        browser.wait_text(run["name"])
        browser.click("Logs")
        browser.wait_text("published browser-")
        browser.click("Artifacts")
        browser.wait_text("sot-browser-report")
    finally:
        browser.close()
        server.http.patch(f"/deployments/{dep['id']}", json={"parameters": dep["parameters"]})
