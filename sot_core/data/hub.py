"""Reading Hugging Face datasets: a ``save_to_disk`` folder, a folder of data files, or a Hub name.

A Hub name loads without network only from the local cache, so the Hub clients are put in offline
mode unless the Hub answers (`_offline_unless_hub_reachable`): a missing dataset then fails at once
with a clear error instead of after half a minute of retries.
"""
from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from urllib.parse import urlsplit

from sot_core.errors import InputError


def hf_records(source: str, name: str, split: str, hub: bool) -> list[tuple[int, object]]:
    """(row number, record) of a dataset folder (`hub` False) or a Hub dataset name (`hub` True), one split."""
    if not hub and not any(p.is_file() and not p.name.startswith(".") for p in Path(name).rglob("*")):
        raise InputError(source, "is a folder with no data files in it; a dataset folder holds what "
                         "save_to_disk wrote, or .jsonl, .json, .csv or .parquet files")
    import datasets

    try:
        with _offline_unless_hub_reachable(check_hub=hub):
            if not hub and (Path(name) / "dataset_dict.json").exists():  # DatasetDict.save_to_disk
                splits = datasets.load_from_disk(name)
                if split not in splits:
                    raise InputError(source, f"no split {split!r}; the folder has {', '.join(splits)}")
                dataset = splits[split]
            elif not hub and (Path(name) / "state.json").exists():  # Dataset.save_to_disk
                dataset = datasets.load_from_disk(name)
            else:
                dataset = datasets.load_dataset(name, split=split)
    except InputError:
        raise
    except Exception as exc:  # datasets raises many unrelated types for the same user mistake
        hint = ("; without network only datasets already in the local cache load: download it where "
                "there is network, or pass a local path") if hub else ""
        reason = " ".join(str(exc).split())  # one line, however the library wrapped it
        reason = reason if len(reason) <= 300 else reason[:300] + "..."
        raise InputError(source, f"cannot load the Hugging Face dataset: {type(exc).__name__}: {reason}{hint}") from None
    return list(enumerate(dataset.to_list(), start=1))


@contextlib.contextmanager
def _offline_unless_hub_reachable(check_hub: bool):
    """Put the Hub clients in offline mode unless a Hub dataset is wanted and the Hub answers.

    Without network `datasets` retries for about half a minute before failing; offline mode fails
    at once and still serves the local cache. The flags are module globals read at call time, so
    they are set for this call only (not thread-safe, like the flags themselves).
    """
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    if not check_hub or saved[0] or not _hub_reachable(hub_constants.ENDPOINT):
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _hub_reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    url = urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False
