"""The report of `benchmarks.mutation`: ``results.json`` and ``README.md`` in the results folder."""
from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

_STATUSES = ("killed", "timeout", "survived", "error", "not run")


def _score(rows: list[dict]) -> dict:
    counts = Counter(r["status"] for r in rows)
    scored = sum(counts[s] for s in ("killed", "timeout", "survived"))
    dead = counts["killed"] + counts["timeout"]
    # survivors explained as equivalent (same behaviour) or as killed by tests outside the selection
    explained = sum(r["status"] == "survived" and bool(r.get("note")) and r["note"] != "no test runs this statement"
                    and not r["note"].startswith("**") for r in rows)
    return {"mutants": len(rows), **{s: counts[s] for s in _STATUSES}, "scored": scored,
            "killed_or_timeout": dead, "score": round(dead / scored, 4) if scored else None, "explained": explained,
            "score_without_explained": round(dead / (scored - explained), 4) if scored > explained else None}


def _fate(m: dict) -> str:
    if m["status"] in ("killed", "timeout"):
        return f"killed by `{m['killed_by'] or 'the timeout'}` (rerun with the new tests)"
    return m.get("note") or "**unexplained**"


def write_report(out: Path, mutants: list[dict], tests: list[str], seconds: float, rerun: bool = False,
                 rerun_seconds: float | None = None) -> dict:
    """Write the per-module scores, every mutant's verdict and the survivors; returns the total."""
    out.mkdir(parents=True, exist_ok=True)
    modules = sorted({m["file"] for m in mutants})
    per_module = {f: _score([m for m in mutants if m["file"] == f]) for f in modules}
    total = _score(mutants)
    survivors = [m for m in mutants if m["status"] == "survived" or m.get("first_run") == "survived"]
    summary = {"command": "python -m benchmarks.mutation", "tests": tests, "seconds": round(seconds),
               "rerun_of_survivors": rerun, "rerun_seconds": None if rerun_seconds is None else round(rerun_seconds), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               **total, "per_module": per_module, "mutants": mutants}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# Mutation testing: {total['killed_or_timeout']} of {total['scored']} mutants killed "
             f"({total['score']:.1%})" + (f"; {total['not run']} not run" if total["not run"] else ""), "",
             f"`python -m benchmarks.mutation` ({summary['finished']}, {summary['machine']}, shared load: "
             f"load average {summary['load_average_at_end']} at the end; {summary['seconds']} s"
             + (f"; the survivors' rerun {summary['rerun_seconds']} s" if rerun else "") + ").", "",
             "| module | mutants | killed | timeout | survived | of which explained | error | not run | score | "
             "score without the explained |", "|---|---|---|---|---|---|---|---|---|---|"]
    for f, s in [*per_module.items(), ("**total**", total)]:
        score = "" if s["score"] is None else f"{s['score']:.1%}"
        clean = "" if s["score_without_explained"] is None else f"{s['score_without_explained']:.1%}"
        lines.append(f"| {f} | {s['mutants']} | {s['killed']} | {s['timeout']} | {s['survived']} | {s['explained']} | "
                     f"{s['error']} | {s['not run']} | {score} | {clean} |")
    lines += ["", f"## Survivors of the first run ({len(survivors)}) and their fate", "",
              "| where | operator | change | code | tests run | fate |", "|---|---|---|---|---|---|"]
    for m in sorted(survivors, key=lambda m: (m["file"], m["line"], m["col"])):
        code = m["code"].replace("|", "\\|")
        lines.append(f"| {m['file']}:{m['line']} | {m['operator']} | `{m['change']}` | `{code}` | {m['tests']} | "
                     f"{_fate(m)} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return total
