"""What an on-call engineer sees of a run: readable names, failure hooks, events, retries, shared results.

- Names: a flow run is called after its kind and curated dataset (``curate-itest-20261201-060000``)
  and renamed to the version it published (``curate-itest-20261201T060012-1a2b3c4d``, the catalog's
  version id); task runs say their role (``embed-pool``, ``embed-safe_anchor``).
- Hooks: a failed or crashed flow run logs one line with its cause to its own log and emits
  ``sot.flow-run.failed`` / ``sot.flow-run.crashed`` naming the dataset (Prefect's own
  ``prefect.flow-run.Failed``/``Crashed`` events are emitted as well and are what the automations
  of `sot_prefect.flows.alerts` react to: those also cover a process that died without running hooks).
- Retries: exponential backoff with jitter, never for our own errors (bad input, store refusals):
  retrying those cannot succeed and hides the message.
- Results: cached task results live under the store (``<home>/prefect-results``), so every worker
  that mounts the store (the Kubernetes volume, a shared disk) is served the same cache hits.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect.tasks import exponential_backoff

from sot_core.errors import SotError

RESULTS_FOLDER = "prefect-results"


def not_bad_input(task, task_run, state) -> bool:
    """Retry unless the failure is our own deliberate error (bad input, store refusal)."""
    try:
        state.result()
    except SotError:
        return False
    except Exception:
        return True
    return True


def retry_policy(retries: int = 2, first_delay: float = 5.0) -> dict:
    """Task options: `retries` with delays first_delay * 2**k, each stretched by up to 50% at random
    (jitter keeps workers that failed together from retrying together); no retry on bad input."""
    return dict(retries=retries, retry_delay_seconds=exponential_backoff(backoff_factor=first_delay),
                retry_jitter_factor=0.5, retry_condition_fn=not_bad_input)


def shared_results(task, home: str):
    """`task` with its results (and so its cache records) in the store at `home` (a Path: Prefect makes it
    a local file system of its own, with no block to save on the server first)."""
    return task.with_options(result_storage=Path(home) / RESULTS_FOLDER)


def run_name(kind: str):
    """flow_run_name callable: ``<kind>-<dataset name>-<UTC time>`` (renamed to the version on publish)."""
    def name() -> str:
        from prefect.runtime import flow_run

        dataset = flow_run.parameters.get("name") or Path(str(flow_run.parameters.get("out_dir") or kind)).name
        return f"{kind}-{dataset}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    return name


def rename_run(new_name: str) -> None:
    """Give the current flow run a new name (e.g. the version it published); best effort."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=new_name)
    except Exception as err:  # a name is not worth failing a finished run over
        log().warning(f"could not rename the flow run to {new_name}: {err}")


def log():
    """The run logger inside a flow or task run, else the `sot` logger (plain Python calls, tests)."""
    import logging

    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("sot")


def emit(event: str, name: str, payload: dict, related: list[dict] | None = None) -> None:
    """A `sot.*` event about curated dataset `name` (resource ``sot.dataset.<name>``)."""
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": f"sot.dataset.{name}", "prefect.resource.name": name},
               payload=payload, related=related or [])


def _on_bad_end(kind: str):
    def hook(flow, flow_run, state) -> None:
        from prefect.logging.loggers import flow_run_logger

        name = (flow_run.parameters or {}).get("name") or flow.name
        cause = (state.message or "no message").strip().splitlines()[-1][:500]
        flow_run_logger(flow_run, flow).error(f"{flow.name} run {flow_run.name} {kind} (dataset {name}): {cause}")
        try:
            emit(f"sot.flow-run.{kind}", str(name), {"cause": cause, "flow": flow.name, "flow_run": flow_run.name},
                 related=[{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                           "prefect.resource.role": "flow-run", "prefect.resource.name": flow_run.name}])
        except Exception:  # no API to talk to: the log line above is what is left
            pass
    hook.__name__ = f"sot_on_{kind}"
    return hook


ON_FAILURE, ON_CRASHED = _on_bad_end("failed"), _on_bad_end("crashed")
HOOKS = dict(on_failure=[ON_FAILURE], on_crashed=[ON_CRASHED])
