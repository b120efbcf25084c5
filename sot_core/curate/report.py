"""The run report (``report.md``): what a curation kept and why, rendered from its run summary."""
from __future__ import annotations


def _report_budget(s: dict) -> list[str]:
    """The report's warnings and harmful-row budget section."""
    lines = [f"> **Warning:** {w}" for w in s.get("warnings") or []]
    lines += [""] if lines else []
    b = s.get("budget")
    if not b:
        return lines
    if not b.get("applied", True):
        lines += ["> **Warning:** the harmful-row budget was **not applied**: it would drop most of the pool, "
                  "so the top rows by weight were kept (`--keep`). Check the inputs; `--keep auto` applies it.", ""]
    lines += ["## Harmful-row budget", "",
              f"Rows that score like the harmful reference rows held out from the solve ({b['folds']}-fold "
              f"cross-fitting) are dropped, at a threshold that drops {b['harmful_recall']:.0%} of those held-out "
              "rows (`--harmful-recall`).", "",
              "| estimated contamination | harmful-like rows | budget-score threshold | score thresholds per fold "
              "| held-out harmful rows dropped per fold | anchor rows harmful-like |", "|---|---|---|---|---|---|",
              f"| {b['estimated_contamination']:.1%} | {b['harmful_like_rows']} | {b['threshold']:.3f} | "
              + ", ".join(f"{t:.4f}" for t in b["fold_score_thresholds"]) + " | "
              + ", ".join(f"{r:.0%}" for r in b["held_out_recall"]) + f" | {b['anchor_harmful_share']:.0%} |", ""]
    return lines


def _cell(text: str) -> str:
    """Text as one Markdown table cell: pipes escaped, line breaks as spaces."""
    return text.replace("|", "\\|").replace("\n", " ")


def _report_review(review: dict | None) -> list[str]:
    """The kept rows to read first (`sot_core.curate.review`)."""
    if not review:
        return []
    lines = ["## Kept rows to review first", "",
             f"The {review['rows']} kept rows that score most like harm (ranked by {review['ranked_by']}; "
             "refusals the guard kept are left out) are in `review.jsonl`, most harmful-like first: the harmful "
             "rows a threshold misses sit here. The first of them:", ""]
    if not review["preview"]:
        return lines[:2] + ["No kept row is listed (`--review-rows 0`, or every kept row is a refusal the guard kept).",
                            ""]
    lines += ["| rank | id | budget score | score | prompt |", "|---|---|---|---|---|"]
    for r in review["preview"]:
        u = "" if r["budget_score"] is None else f"{r['budget_score']:.3f}"
        lines.append(f"| {r['rank']} | {r['id']} | {u} | {r['score']:.4f} | {_cell(r['prompt'])} |")
    return lines + [""]


def render_report(s: dict) -> str:
    """``report.md`` from a run summary (the dict `publish` writes to ``run.json``)."""
    c, cfg, solver = s["counts"], s["config"], s["solver"]
    lines = [
        f"# SOT curation report: {s['version']}",
        "",
        f"Kept **{c['selected']} of {c['pool']}** pool rows (keep={cfg['keep']}, "
        f"harmful_recall={cfg.get('harmful_recall', 0)}, lam={cfg['lam']}, eps={cfg['eps']}, "
        f"mode={cfg['mode']}, encoder={cfg['encoder']}).",
        "",
    ]
    cr = s.get("curated_records") or {}
    if cr.get("file"):
        lines += [f"The kept rows as the input held them (every field, with `sot_id` and `sot_weight`): "
                  f"`{cr['file']}`.", ""]
    elif cr.get("kept_rows_without_record"):
        lines += [f"No `curated_records.jsonl`: {cr['kept_rows_without_record']} kept rows were stored before "
                  "input records were kept; curate the pool again from its files to get them.", ""]
    lines += _report_budget(s)
    q = s.get("quality")
    if q:
        lines += [
            "## Against the labels",
            "",
            "| harmful rows | harmful kept | harmful kept (fraction) | AUROC of score |",
            "|---|---|---|---|",
            f"| {q['harmful_total']} | {q['harmful_kept']} | {q['harmful_kept_fraction']:.1%} | {q['auroc']:.3f} |",
            "",
        ]
    r = s.get("refusals") or {}
    if r.get("pool"):
        caveat = ("Rows labelled harmful are not counted." if r.get("labels_used") else
                  "Without labels, a partial compliance that opens with an apology counts too.")
        lines += ["## Refusals in the pool (keyword heuristic)", "",
                  f"{r['pool']} rows contain a refusal phrase early; **{r['kept']} kept** ({r['kept'] / r['pool']:.0%}). "
                  f"{caveat} Real refusals to harmful prompts are useful safety data: `--refusal-anchor` keeps more "
                  "of them.", ""]
    lines += ["## Time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in s["stage_seconds"].items()]
    lines += ["", "Rows embedded in this run (others came from the store's cache): "
              + ", ".join(f"{k} {v}" for k, v in c["embedded_now"].items()), ""]
    if solver:
        lines += ["## Solver", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in solver.items() if k != "objective_trace"]
        lines += [""]
    lines += _report_review(s.get("review"))
    lines += ["## Most harmful-like rows", "", "| id | score | prompt |", "|---|---|---|"]
    for r in s["top_flagged"]:
        lines.append(f"| {r['id']} | {r['score']:.4f} | {_cell(r['prompt'])} |")
    return "\n".join(lines) + "\n"
