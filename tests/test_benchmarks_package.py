"""The benchmarks package: every module imports without running anything, none edits sys.path or
imports another benchmark script, each exposes `main`, and results sit in one folder per benchmark."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SHARED_MODULES = {"__init__", "common", "budget_arms", "aligned_model",  # shared by two or more benchmarks
                  "mutants", "mutation_worker", "mutation_report"}  # the last three: parts of mutation
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in SHARED_MODULES)
STANDALONE = {"ot_scaling", "gpu_check"}  # also run by path, so they may import only sot_core


@pytest.fixture(autouse=True)
def repo_on_path(monkeypatch):
    # `python -m benchmarks.NAME` runs from the repository root; give the imports here the same root.
    monkeypatch.syspath_prepend(str(REPO))


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_the_expected_benchmarks_exist():
    assert {"curation_quality", "general_pool_seeds", "refusal_anchor", "refusal_views", "ot_scaling", "gpu_check",
            "nightly_incremental", "safety_e2e", "benign_subsets", "safety_pilot", "selection_budget", "embed_scaling",
            "mutation", "replay_dose", "aligned_states", "aligned_budget", "review_queue", "sweep_misses",
            "seed_pooled"} == set(SCRIPTS)


def test_no_sys_path_edits():
    for path in BENCH.rglob("*.py"):
        text = path.read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, path


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_import_only_the_shared_module(name):
    local = {m for m in imported_modules(BENCH / f"{name}.py") if m.startswith((".", "benchmarks"))}
    if name in STANDALONE:
        assert local == set(), f"{name} must run by path: it may import only sot_core and third-party code"
    else:
        assert local <= {f"benchmarks.{m}" for m in SHARED_MODULES - {"__init__"}}, local
    others = {s for s in SCRIPTS if s != name}
    assert not (imported_modules(BENCH / f"{name}.py") & others), "a script imports another script"


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_imports_and_has_main(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(getattr(module, "main", None))
    assert module.__doc__ and f"python -m benchmarks.{name}" in module.__doc__


def test_package_docstring_lists_every_benchmark():
    import benchmarks

    for name in SCRIPTS:
        assert f"``{name}``" in benchmarks.__doc__, name


def test_gpu_check_data_is_ot_scaling_data():
    ot_scaling = importlib.import_module("benchmarks.ot_scaling")
    gpu_check = importlib.import_module("benchmarks.gpu_check")
    for a, b in zip(ot_scaling.make_data(300), gpu_check.make_data(300)):
        np.testing.assert_array_equal(a, b)


def test_results_one_folder_per_benchmark():
    results = BENCH / "results"
    assert not [p.name for p in results.iterdir() if p.is_file()], "results go in results/<benchmark>/"
    assert {p.name for p in results.iterdir() if p.is_dir()} <= set(SCRIPTS)
    assert not list(results.rglob("*smoke*")), "smoke outputs do not belong in results/"


def test_results_page_points_at_existing_files():
    text = (BENCH / "RESULTS.md").read_text()
    for ref in set(re.findall(r"results/[\w./-]+\.(?:json|md)", text)):
        assert (BENCH / ref).exists(), ref


def test_replay_dose_choice_and_measurement_use_disjoint_halves():
    """`benchmarks.replay_dose` picks the smallest dose within the margin on one half and reports
    its gap on the other; checked against a direct count on a split small enough to do by hand."""
    rd = importlib.import_module("benchmarks.replay_dose")
    assert rd.choose_dose([(0.2, 1.0), (0.0, 9.0), (0.1, 2.9)], margin=3.0) == 0.1
    assert rd.choose_dose([(0.0, 3.5), (0.1, 4.0)], margin=3.0) is None
    base = np.array([0, 0, 0, 0, 1, 0, 0, 0])
    doses = {0.0: np.array([1, 1, 0, 0, 1, 1, 1, 1]), 0.1: np.array([0, 0, 0, 0, 1, 1, 1, 1])}
    choose, measure = np.arange(4), np.arange(4, 8)
    # choosing half: dose 0 is 50 points over the base, dose 0.1 level with it -> 0.1; measured on
    # the other half it is 4 compliant against 1 of 4, i.e. 75 points over the base
    assert rd.split_once(base, doses, choose, measure, margin=3.0) == (0.1, 75.0)
    report = rd.dose_split(base, doses, margin=3.0, splits=50)
    assert sum(report["chosen"].values()) == 50 and report["full_prompt_gap"] == {"0.0": 62.5, "0.1": 37.5}
    # two judges: the second sees dose 0.1 comply on the choosing half, so only a dose level by both passes
    base2, doses2 = np.stack([base, base]), {d: np.stack([y, y]) for d, y in doses.items()}
    doses2[0.1][1, :4] = 1
    doses2[0.2] = np.stack([doses[0.1], doses[0.1]])
    assert rd.split_once(base2, doses2, choose, measure, margin=3.0) == (0.2, 75.0)
    assert rd.gap_points(doses2[0.1], base2, choose) == 100.0  # the worst judge's gap
    doses2[0.3] = base2.copy()  # level with the base everywhere, so some dose is always chosen
    report = rd.dose_split(base2, doses2, margin=3.0, splits=20, judges=["keyword", "judge"])
    assert report["chosen"]["none"] == 0 and report["fixed_split"]["chosen"] in (0.2, 0.3)
    assert set(report["fixed_split"]["measured"]) == {"keyword", "judge"}


def test_seed_pooled_averages_seeds_per_prompt_and_resamples_prompts_whole():
    """`benchmarks.seed_pooled`: the pooled difference is the mean over prompts of the seed-averaged
    verdicts (checked by hand), and the interval comes from resampling prompts, checked against a
    brute-force cluster bootstrap with the same random indices."""
    sp = importlib.import_module("benchmarks.seed_pooled")
    a = [np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 0, 1, 1])]
    b = [np.array([0, 1, 0, 0, 0, 0]), np.array([0, 1, 0, 1, 0, 0])]
    # per-prompt seed means: a = [1, .5, 0, 0, 1, .5], b = [0, 1, 0, .5, 0, 0] -> d sums to 1.5 over 6 prompts
    out = sp.pooled_difference(a, b, n_boot=2000)
    assert out["diff"] == 25.0 and out["n_prompts"] == 6
    assert out["per_seed_rates"] == {"a": [50.0, 50.0], "b": [16.67, 33.33]}
    d = np.mean(a, axis=0) - np.mean(b, axis=0)
    idx = np.random.default_rng(0).integers(0, 6, size=(2000, 6))
    assert out["ci_low"] == round(100 * float(np.quantile(d[idx].mean(axis=1), 0.025)), 2)
    assert out["ci_high"] == round(100 * float(np.quantile(d[idx].mean(axis=1), 0.975)), 2)
    same = sp.pooled_difference(a, a, n_boot=200)
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0.0


def test_threshold_free_figure_counts_harm_below_the_benign_cut():
    """`budget_arms.harmful_kept_at_benign_share`: harmful rows kept by the cut that keeps a share of the
    benign rows, refusal-guarded rows always kept; checked on scores small enough to count by hand."""
    arms = importlib.import_module("benchmarks.budget_arms")
    score = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 0.5, 2.5, 9.0, 8.0])
    kinds = np.array(["benign"] * 5 + ["harmful"] * 3 + ["refusal"])
    none = np.zeros(9, dtype=bool)
    # keeping 3 of 5 benign rows cuts at 2.0: harmful 0.5 stays, 2.5 and 9.0 go
    assert arms.harmful_kept_at_benign_share(score, kinds, none, share=0.5) == 1
    assert arms.harmful_kept_at_benign_share(score, kinds, none, share=1.0) == 2  # cut at 4.0
    guarded = none.copy()
    guarded[7] = True  # a harmful row the refusal judge protects is kept whatever its score
    assert arms.harmful_kept_at_benign_share(score, kinds, guarded, share=0.5) == 2


def test_sweep_draw_pools_hold_the_stated_level_and_a_disjoint_anchor():
    from benchmarks.budget_arms import sweep_draw

    rows = {"refusal": list(range(400)), "harmful": list(range(200))}
    for seed in (0, 7):
        for level in (0.0, 0.05, 0.10, 0.30):
            parts, anchor = sweep_draw(rows, seed, level)
            (_, benign), (_, refusal), (_, harmful) = parts
            assert (len(benign), len(refusal), len(anchor)) == (400, 40, 50) and not set(benign) & set(anchor)
            assert abs(len(harmful) / (440 + len(harmful)) - level) < 0.002  # the level is the pool's harmful share
            assert len(set(harmful)) == len(harmful) and sweep_draw(rows, seed, level) == (parts, anchor)


def test_lone_draw_adds_distinct_harmful_rows_to_a_clean_pool():
    """`budget_arms.lone_draw`: the clean sweep pool of the same draw, and distinct harmful rows, seeded by the draw."""
    from benchmarks.budget_arms import lone_draw, sweep_draw

    rows = {"refusal": list(range(400)), "harmful": list(range(200))}
    parts, anchor, lone = lone_draw(rows, 3, 10)
    assert (parts, anchor) == sweep_draw(rows, 3, 0.0) and parts[2][1] == []  # no harm in the pool itself
    assert len(set(lone)) == 10 and all(0 <= h < 200 for h in lone)
    assert lone_draw(rows, 3, 10)[2] == lone and lone_draw(rows, 4, 10)[2] != lone
