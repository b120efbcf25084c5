"""Failpoints: named places where a test can kill the running process with SIGKILL (a test hook).

``failpoint("embed.after_shard")`` does nothing unless the environment variable ``SOT_FAILPOINT``
names that point when the process starts; then the process sends itself SIGKILL there, a real
``kill -9`` with no cleanup, no ``finally`` blocks and no flushing. The fault-injection tests
(``tests/test_fault_injection.py``) use it to stop a real ``sot`` process at exact points and
check that the next run recovers (see ``sot_core.data.recovery`` for the recovery rules).

``SOT_FAILPOINT`` is a comma-separated list of ``NAME`` or ``NAME@N`` (kill at the N-th time the
point is reached in this process; default the first), e.g. ``train.after_step@5``. Before the kill
one line ``sot failpoint NAME: SIGKILL`` goes to stderr, so a test can tell its kill from any
other death. Unarmed, a failpoint costs one dict lookup.

Points (where they sit, and what is on disk when they fire):

========================== =========================================================================
ingest.before_catalog      `Store.put_dataset`: the dataset file is complete, its catalog rows not yet
ingest.after_dataset       `pipeline.ingest`: one input dataset stored and registered
embed.after_shard          `embed.shards.embed_rows`: one shard of a dataset stored and registered (mid-dataset)
embed.before_catalog       `Store.put_embeddings`: the shard is renamed into place, its rows not committed
embed.after_dataset        `pipeline.embed`, and `embed_datasets` (Prefect, local runner) after each input's
                           shards: every row of one dataset embedded, the next input not started
costs.after_anchor         `pipeline.build_costs`: the anchor cost matrix written, the harmful one not yet
costs.done                 `pipeline.build_costs`: the costs stage complete (costs -> solve boundary)
solve.before_rename        `pipeline.solve`: weights and scores written to the stage's temp folder
solve.done                 `pipeline.solve`: the solve stage complete (solve -> publish boundary)
publish.before_record      `select.publish`: the out folder's weights and curated rows written, no
                           curated version recorded yet
publish.after_record       `select.publish`: the version recorded, run.json and report.md not written
nightly.before_commit      `incremental.commit_batch`: the version published, the watermark not moved
nightly.after_commit       `incremental.commit_batch`: the watermark moved (batch committed)
train.after_step           `lora._train_steps`: an optimizer step finished (before its checkpoint)
train.checkpoint           `lora._save_checkpoint`: a checkpoint written to its temp folder, not renamed
========================== =========================================================================
"""
from __future__ import annotations

import os
import signal
import sys

ENV = "SOT_FAILPOINT"


def _parse(spec: str) -> dict[str, int]:
    armed = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, nth = item.partition("@")
        armed[name] = int(nth) if nth else 1
    return armed


# {name: hits left before the kill}; empty (one failed lookup per call) unless SOT_FAILPOINT is set
_ARMED: dict[str, int] = _parse(os.environ.get(ENV, ""))


def failpoint(name: str) -> None:
    """SIGKILL this process here if ``SOT_FAILPOINT`` arms `name` (a test hook; see the module docstring)."""
    if name in _ARMED:
        _ARMED[name] -= 1
        if _ARMED[name] == 0:
            sys.stderr.write(f"sot failpoint {name}: SIGKILL\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
