"""Where evaluations get their prompts: the shared data folder and its held-out sets.

One rule (`prompt_key`) says when two prompts are the same prompt, for every place that asks:
skipping trained-on prompts in evaluation, and pairing two evaluations prompt by prompt.
"""
from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Iterable, Sequence

from sot_core.data.loaders import canonical_prompt

TASK_FILES = {"sst2": ("sst2/val.json", ["positive", "negative"]),
              "ag_news": ("ag_news/test.json", ["world", "sports", "business", "sci/tech"])}


def shared_data_dir() -> Path:
    """``$SOT_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("SOT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def read_csv(path: Path) -> list[dict]:
    """Rows of a reference CSV file (prompt sets, labelled completions) as dicts.

    Every line that starts with ``#`` is skipped (PyRIT puts a version line first), also a line
    inside a quoted cell, which drops such lines from multi-line cells (C code in HarmBench
    contexts and XSTest completions). User data goes through the strict reader of
    `sot_core.data.files.csv_records` instead; this one is kept as it is because the held-out
    prompt draws and the refusal judge's training rows (and cache key) depend on its output.
    """
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def prompt_key(prompt: str) -> str:
    """How two prompts are compared: case and runs of whitespace do not count."""
    return " ".join(str(prompt).lower().split())


def harmful_prompts(data: Path, sets: Sequence[str], n: int, seed: int = 0, exclude: Iterable[str] = ()) -> list[str]:
    """`n` held-out harmful prompts drawn round-robin from `sets` (shuffled with `seed`).

    Duplicates and prompts in `exclude` (compared by `prompt_key`; e.g. the prompts a model was
    just trained on) are skipped, so a replayed refusal cannot be scored as a held-out refusal.
    """
    pools = {
        "advbench": lambda: [r["goal"] for r in read_csv(data / "advbench/advbench.csv")],
        "harmbench": lambda: [r["Behavior"] for r in read_csv(data / "harmbench/harmbench_behaviors_text_test.csv")
                              if not r["ContextString"].strip()],
        "strongreject": lambda: [r["forbidden_prompt"] for r in read_csv(data / "strongreject/strongreject.csv")],
        "jailbreakbench": lambda: [r["Goal"] for r in read_csv(data / "jailbreakbench/jailbreakbench.csv")],
    }
    rng = random.Random(seed)
    lists = []
    for s in sets:
        items = pools[s]()
        rng.shuffle(items)
        lists.append(items)
    out, seen = [], {prompt_key(p) for p in exclude}
    while len(out) < n and any(lists):
        for items in lists:
            if items and len(out) < n:
                p = items.pop()
                if prompt_key(p) not in seen:
                    seen.add(prompt_key(p))
                    out.append(p)
    return out


def xstest_prompts(data: Path, split: str = "eval", label: str = "safe") -> list[str]:
    """XSTest prompts of one label; ``split`` "train" = even ids, "eval" = odd ids, "all"."""
    rows = [r for r in read_csv(data / "xstest/xstest_prompts.csv") if r["label"] == label]
    keep = {"train": 0, "eval": 1}.get(split)
    return [r["prompt"] for r in rows if keep is None or int(r["id"]) % 2 == keep]


def benign_eval_prompts(data: Path, n: int) -> list[str]:
    """Held-out benign instructions: MT-Bench first turns, then Alpaca rows 800-999 (never trained on)."""
    mt = [json.loads(l)["turns"][0] for l in open(data / "llms_finetuning_safety/mt_bench/question.jsonl")]
    alp = json.load(open(data / "alpaca_en_demo/alpaca_en_demo.json"))[800:]
    return (mt + [canonical_prompt(r["instruction"], r.get("input") or "") for r in alp])[:n]


def utility_rows(data: Path, task: str, n: int) -> tuple[list[str], list[str], list[str]]:
    """(prompts, gold labels, label set) of a task.

    Prompts are in the canonical form that ingestion gives the fine-tuning mixes' rows
    (`sot_core.data.loaders.canonical_prompt`), so a model is scored on the format curated data
    trains it on.
    """
    rel, labels = TASK_FILES[task]
    rows = json.load(open(data / "harmful_finetune_mixes_beavertails" / rel))[:n]
    return ([canonical_prompt(r["instruction"], r["input"]) for r in rows],
            [r["output"].strip().lower() for r in rows], labels)
