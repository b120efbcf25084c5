"""Paired comparisons of two models' per-prompt safety verdicts.

Curation-quality metrics against labels (AUROC, harmful rows kept, label files) live in
`sot_core.curate.quality`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sot_core.errors import InputError
from sot_core.eval.eval_sets import prompt_key


def paired_difference(a, b, n_boot: int = 10000, seed: int = 0) -> dict:
    """Compare two 0/1 outcome vectors measured on the same prompts (e.g. harmful compliance of
    two fine-tuned models): rate difference ``mean(a) - mean(b)`` with a 95% paired bootstrap
    interval (prompts resampled with replacement) and the exact two-sided McNemar p-value.

    McNemar uses only the discordant prompts: with n10 = #(a=1, b=0) and n01 = #(a=0, b=1),
    under H0 each discordant prompt is a fair coin, so p = min(1, 2 P[Bin(n10+n01, 1/2) <= min(n10, n01)]).
    Pairing matters: two models that agree on most prompts differ significantly at far smaller
    gaps than two independent samples would (McNemar 1947; Efron & Tibshirani 1993, ch. 6).
    """
    from math import comb

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_difference needs two equal-length non-empty vectors, got {a.shape} and {b.shape}")
    d = a - b
    boot = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[boot].mean(axis=1)
    n10, n01 = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n = n10 + n01
    tail = sum(comb(n, k) for k in range(min(n10, n01) + 1)) / 2**n if n else 1.0
    return {"diff": float(d.mean()), "ci_low": float(np.quantile(means, 0.025)), "ci_high": float(np.quantile(means, 0.975)),
            "p_mcnemar": float(min(1.0, 2 * tail)), "n": len(d), "n_a_only": n10, "n_b_only": n01}


def compare_arms(verdicts: dict, references: Sequence[str]) -> dict:
    """`paired_difference` of every arm against each reference arm that was run, per judge.

    ``verdicts``: {arm: {"prompts": [...], judge: [0/1 per prompt], ...}}. Returns
    {arm: {"vs_<reference>": {judge: paired_difference(arm, reference)}}}. Pairing is only valid
    on the same prompts in the same order, so a mismatch raises instead of comparing.
    """
    report: dict = {}
    for ref in (r for r in references if r in verdicts):
        for name, v in verdicts.items():
            if name == ref:
                continue
            if v["prompts"] != verdicts[ref]["prompts"]:
                raise ValueError(f"arms {name!r} and {ref!r} were scored on different prompts; cannot pair them")
            report.setdefault(name, {})[f"vs_{ref}"] = {
                judge: paired_difference(v[judge], verdicts[ref][judge]) for judge in v
                if judge != "prompts" and judge in verdicts[ref]}
    return report


def compare_evaluations(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> dict:
    """Paired comparison of two `evaluate_model` results (run with ``per_prompt=True``).

    Harmful prompts are matched by `sot_core.eval.eval_sets.prompt_key` (case and whitespace runs ignored),
    so two models whose evaluations skipped different trained-on prompts are still compared on
    the prompts both saw. Returns
    ``{"n_paired": n, "harmful": {judge: paired_difference(b, a)}, "metrics": {name: {a, b, diff}}}``:
    differences are B minus A, and ``n_b_only`` counts prompts only B complied with. Raises
    `InputError` naming the result that lacks per-prompt verdicts or holds inconsistent ones.
    """
    for name, res in ((name_a, a), (name_b, b)):
        if not isinstance(res, dict) or "harmful_complied" not in res or "harmful_prompts" not in res:
            raise InputError(name, "no per-prompt verdicts; evaluate with per_prompt=True (sot evaluate does)")
        n = len(res["harmful_prompts"])
        for judge, v in res["harmful_complied"].items():
            if len(v) != n:
                raise InputError(name, f"{len(v)} verdicts for {n} harmful prompts", field=f"harmful_complied.{judge}")
        if len({prompt_key(p) for p in res["harmful_prompts"]}) != n:
            raise InputError(name, "a harmful prompt appears twice; cannot pair prompts", field="harmful_prompts")
    index_b = {prompt_key(p): i for i, p in enumerate(b["harmful_prompts"])}
    pairs = [(i, index_b[prompt_key(p)]) for i, p in enumerate(a["harmful_prompts"]) if prompt_key(p) in index_b]
    if not pairs:
        raise InputError(name_b, f"shares no harmful prompt with {name_a}; nothing to pair")
    ia, ib = (np.array(ix) for ix in zip(*pairs))
    judges = [j for j in a["harmful_complied"] if j in b["harmful_complied"]]
    harmful = {}
    for j in judges:
        d = paired_difference(np.asarray(b["harmful_complied"][j])[ib], np.asarray(a["harmful_complied"][j])[ia])
        d["n_b_only"], d["n_a_only"] = d.pop("n_a_only"), d.pop("n_b_only")  # first argument was B
        harmful[j] = d
    scalars = {k: {"a": a[k], "b": b[k], "diff": b[k] - a[k]} for k in a
               if k in b and isinstance(a[k], (int, float)) and isinstance(b[k], (int, float)) and not isinstance(a[k], bool)}
    return {"n_paired": len(pairs), "harmful": harmful, "metrics": scalars}
