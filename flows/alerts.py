"""Alerting, set up at deploy time: a notification block and Prefect automations.

`prefect.yaml` runs `ensure_alerts` as a build step, so every ``prefect deploy`` (from the checkout,
from scripts/serve.sh or from the images' deploy job) creates or updates, on the server it deploys to:

- the notification block ``sot-alerts``: a custom webhook that POSTs ``{"subject": ..., "body": ...}``
  to ``$SOT_ALERT_WEBHOOK`` when that is set at deploy time. Any other notification block saved
  under that name in the UI (Slack, Microsoft Teams, e-mail, ...) is used as it is;
- automations ``sot: run failed``, ``sot: run crashed``, ``sot: run late`` (flow runs of the `sot`
  tagged deployments: Prefect's ``prefect.flow-run.Failed/Crashed/Late`` events, which the server
  emits even when the run's process died) and ``sot: drift`` (``sot.nightly.drift``, emitted by the
  nightly flow). Each sends a notification through ``sot-alerts``; without such a block they only
  record that they fired (the UI's event feed shows them) until one is saved;
- ``sot: lost run``: a running flow run whose heartbeats stop for 90 s is marked Crashed with the
  reason (its process died together with its worker, so nobody else reports it).

Run by hand with ``python -m sot_prefect.flows.alerts [WEBHOOK_URL]``.
"""
from __future__ import annotations

import os
import sys

BLOCK = "sot-alerts"
TAG = {"prefect.resource.id": "prefect.tag.sot", "prefect.resource.role": "tag"}
RUN_BODY = ("Flow run {{ flow_run.name }} of {{ flow.name }} is {{ flow_run.state.name }}: "
            "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}")
LATE_BODY = ("Flow run {{ flow_run.name }} of {{ flow.name }} is Late: no worker of work pool "
             "'{{ flow_run.work_pool_name }}' picked it up. Start one where the work can run, e.g. "
             "`prefect worker start --pool {{ flow_run.work_pool_name }}` (the GPU pool needs a GPU machine).\n"
             "{{ flow_run|ui_url }}")
DRIFT_BODY = ("Nightly batch of '{{ event.resource.name }}': {{ event.payload.reason }} "
              "(to anchor {{ event.payload.to_anchor }}, to harmful reference {{ event.payload.to_harmful }}, "
              "{{ event.payload.n_batch }} rows).")
# (name, event, subject, body, description)
ALERTS = [
    ("sot: run failed", "prefect.flow-run.Failed", "SOT run failed: {{ flow_run.name }}", RUN_BODY,
     "A flow run of a sot deployment failed (bad input, a missing incoming folder, a stage error)."),
    ("sot: run crashed", "prefect.flow-run.Crashed", "SOT run crashed: {{ flow_run.name }}", RUN_BODY,
     "A flow run's process died (killed, out of memory, worker lost)."),
    ("sot: run late", "prefect.flow-run.Late", "SOT run waiting for a worker: {{ flow_run.name }}", LATE_BODY,
     "A scheduled run was not picked up in time: no worker polls its work pool (e.g. no GPU worker)."),
    ("sot: drift", "sot.nightly.drift", "SOT drift alert: {{ event.resource.name }}", DRIFT_BODY,
     "A nightly batch moved towards the harmful reference or away from the safe anchor."),
]


def notification_block_id(webhook: str | None, name: str = BLOCK):
    """The id of the notification block `name`: saved first from `webhook` when one is given."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    if webhook:
        CustomWebhookNotificationBlock(name=name, url=webhook, method="POST",
                                       json_data={"subject": "{{subject}}", "body": "{{body}}"}).save(
            name, overwrite=True)
    with get_client(sync_client=True) as client:  # any block type: whichever notifier the operator saved
        found = [b for b in client.read_block_documents(include_secrets=False) if b.name == name]
    return found[0].id if found else None


def automation(name: str, event: str, subject: str, body: str, description: str, block_id):
    """One reactive automation: fire once per matching event (per flow run / dataset)."""
    from prefect.automations import AutomationCore, DoNothing, EventTrigger, Posture, SendNotification

    run_event = event.startswith("prefect.flow-run.")
    trigger = EventTrigger(
        expect={event}, posture=Posture.Reactive, threshold=1, within=0,
        match={"prefect.resource.id": "prefect.flow-run.*" if run_event else "sot.dataset.*"},
        match_related=TAG if run_event else {}, for_each={"prefect.resource.id"})
    action = SendNotification(block_document_id=block_id, subject=subject, body=body) if block_id else DoNothing()
    return AutomationCore(name=name, description=description, enabled=True, trigger=trigger, actions=[action])


LOST_MESSAGE = ("No heartbeat for 90 s: the flow run's process is gone (killed, out of memory, or its machine or "
                "worker lost). Rerun it; cached stages are reused.")


def lost_run_automation():
    """Mark a flow run Crashed when its heartbeats (every 30 s, prefect.yaml) stop for 90 s without a final
    state: nobody else reports a run whose worker died with it. The Crashed state then alerts as usual."""
    from prefect.automations import AutomationCore, ChangeFlowRunState, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType

    finals = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed", "Cancelling")}
    trigger = EventTrigger(
        after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.heartbeat", *finals},
        match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=TAG, for_each={"prefect.resource.id"},
        posture=Posture.Proactive, threshold=1, within=90)
    return AutomationCore(name="sot: lost run", description="A running flow run stopped sending heartbeats.",
                          enabled=True, trigger=trigger,
                          actions=[ChangeFlowRunState(state=StateType.CRASHED, message=LOST_MESSAGE)])


def ensure_alerts(webhook: str | None = None, **_ignored) -> dict:
    """Create or update the notification block and the four automations; returns their ids by name.

    A deploy step (prefect.yaml `build`): `webhook` comes from ``{{ $SOT_ALERT_WEBHOOK }}`` (empty
    when unset: an existing ``sot-alerts`` block is kept).
    """
    from prefect.client.orchestration import get_client

    block_id = notification_block_id((webhook or "").strip() or None)
    ids = {}
    with get_client(sync_client=True) as client:
        for wanted in [automation(*spec, block_id) for spec in ALERTS] + [lost_run_automation()]:
            existing = client.read_automations_by_name(wanted.name)
            if existing:
                client.update_automation(existing[0].id, wanted)
                for extra in existing[1:]:  # duplicates from a race of two deploys
                    client.delete_automation(extra.id)
                ids[wanted.name] = str(existing[0].id)
            else:
                ids[wanted.name] = str(client.create_automation(wanted))
    print(f"alerts: {len(ids)} automations; notifications {'through block ' + BLOCK if block_id else 'off'}"
          f"{'' if block_id else ' (set SOT_ALERT_WEBHOOK at deploy time or save a notification block ' + BLOCK + ')'}")
    return {"alert_block": str(block_id) if block_id else None, "automations": ids}


if __name__ == "__main__":
    ensure_alerts(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SOT_ALERT_WEBHOOK"))
