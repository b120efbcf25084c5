"""One prepared check of the GPU paths: CUDA OT solve, FAISS GPU index, bf16 LoRA training,
GPU generation and the LLM encoder on CUDA. CPU machines skip it (exit 0 with a note).

Each section is timed on its own and written to the JSON as soon as it finishes, so a run cut
short still reports what it measured. Baselines (CPU solve, fp32 training) run in the same
process on the same machine, so ratios compare like with like.

The LoRA sections use a SmolLM2-135M-shaped model with *random* weights (its config.json and
tokenizer, no weights): the trained weights (517 MB) cannot travel to a lent GPU machine. That
checks speed, dtype handling and finite losses of our training and generation code on CUDA, not
model quality.

    python -m benchmarks.gpu_check --json benchmarks/results/gpu_check/h200.json \
        --model-files .sot/models/smollm2-135m-instruct

This script imports only `sot_core` and third-party libraries, so `python benchmarks/gpu_check.py`
works as well (a lent machine may get the repository without the benchmarks package on its path).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEV = "cuda"  # --dry-run-cpu swaps in "cpu" to test this script on a machine without a GPU
D, N_ANCHOR, N_HARMFUL, SEED = 384, 50, 5000, 0


# The generator of ot_scaling.make_data, copied so that this script needs nothing but sot_core;
# tests/test_benchmarks_package.py checks that the two give the same arrays.
def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def make_data(n: int):
    """Clustered unit vectors (as `benchmarks.ot_scaling.make_data`): pool, anchor, harmful reference."""
    rng = np.random.default_rng(SEED)
    safe_c, harm_c = _unit(rng.normal(size=(10, D))), _unit(rng.normal(size=(10, D)))

    def sample(centres, count):
        out = np.empty((count, D), dtype=np.float32)
        for start in range(0, count, 100_000):
            stop = min(start + 100_000, count)
            noise = rng.standard_normal(size=(stop - start, D), dtype=np.float32) / np.sqrt(D)
            out[start:stop] = _unit(centres[rng.integers(0, len(centres), stop - start)] + noise)
        return out

    n_safe = int(0.9 * n)
    pool = np.vstack([sample(safe_c, n_safe), sample(harm_c, n - n_safe)])
    return pool, sample(safe_c, N_ANCHOR), sample(harm_c, N_HARMFUL)


def timed(fn, *a, **kw):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def ot_section(sizes, knn_size, report):
    from sot_core.ot.costs import cosine_costs
    from sot_core.ot.push_pull import PushPullConfig, solve_push_pull

    warm = make_data(2000)
    for dev in ("cpu", DEV):  # one-off CUDA context / OpenMP start-up is not timed
        solve_push_pull(cosine_costs(warm[0], warm[1]), cosine_costs(warm[0], warm[2]), PushPullConfig(device=dev, max_outer=2))
    for n in sizes:
        pool, anchor, harmful = make_data(n)
        ca, ch = cosine_costs(pool, anchor), cosine_costs(pool, harmful)
        row = {}
        for name, cfg in (("cpu_f32", PushPullConfig(device="cpu")), ("cuda_f32", PushPullConfig(device=DEV)),
                          ("cuda_f64", PushPullConfig(device=DEV, dtype="float64"))):
            _reset_peak()
            res, sec = timed(solve_push_pull, ca, ch, cfg)
            d = res.diagnostics
            row[name] = {"seconds": round(sec, 3), "outer": d["outer_iterations"], "converged": d["converged"],
                         "marginal_tol": max(d["marginal_error_anchor"], d["marginal_error_harmful"]),
                         "finite": bool(np.isfinite(res.weights).all()),
                         "gpu_peak_mb": round(_peak() / 2**20, 1) if DEV in name else None,
                         "weights": res.weights}
        ref = row["cpu_f32"]["weights"]
        for name in row:
            row[name]["weight_l1_vs_cpu"] = float(np.abs(row[name].pop("weights") - ref).sum())
        row["speedup_cuda_f32_vs_cpu"] = round(row["cpu_f32"]["seconds"] / row["cuda_f32"]["seconds"], 2)
        report["ot_dense"][str(n)] = row
        print("ot", n, json.dumps(row), flush=True)

    # small epsilon in float32 on the GPU: the log-domain path must stay finite (a smaller pool on
    # the CPU dry run, where epsilon scaling makes this solve slow)
    n_small = 2000 if DEV == "cuda" else 200
    pool, anchor, harmful = make_data(n_small)
    res, sec = timed(solve_push_pull, cosine_costs(pool, anchor), cosine_costs(pool, harmful),
                     PushPullConfig(device=DEV, eps=1e-3, max_outer=2))
    report["ot_small_eps_f32"] = {"n": n_small, "eps": 1e-3, "seconds": round(sec, 2),
                                  "finite": bool(np.isfinite(res.weights).all())}

    if knn_size:
        t0 = time.perf_counter()
        pool, anchor, harmful = make_data(knn_size)
        gen_s = time.perf_counter() - t0
        (ca, ch), cost_s = timed(lambda: (cosine_costs(pool, anchor), cosine_costs(pool, harmful, k=32)))
        del pool
        _reset_peak()
        res, sec = timed(solve_push_pull, ca, ch, PushPullConfig(device=DEV))
        d = res.diagnostics
        report["ot_knn"] = {"n": knn_size, "k": 32, "data_s": round(gen_s, 1), "cost_s": round(cost_s, 1),
                            "faiss_gpus": _faiss_gpus(), "solve_cuda_s": round(sec, 2), "converged": d["converged"],
                            "outer": d["outer_iterations"], "gpu_peak_mb": round(_peak() / 2**20, 1),
                            "finite": bool(np.isfinite(res.weights).all()),
                            "harmful_mass": float(res.weights[int(0.9 * knn_size):].sum())}
        print("knn", json.dumps(report["ot_knn"]), flush=True)


def _reset_peak():
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak() -> int:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def _faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def make_random_model(model_files: Path, dst: Path) -> Path:
    """A SmolLM2-shaped causal LM with random weights plus the real tokenizer."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(model_files)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(dst)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (model_files / f).exists():
            shutil.copy(model_files / f, dst / f)
    return dst


def lora_section(model_files: Path, report, steps: int):
    from sot_core.eval.evaluate import generate, load_for_eval
    from sot_core.train.lora import LoraTrainConfig, train_lora

    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    model = make_random_model(model_files, work / "model")
    rows = [json.loads(line) for line in open(ROOT / "data/demo/pool.jsonl")][: steps * 8]
    data = work / "curated.jsonl"
    data.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"], "response": r["response"],
                                        "source": "demo", "weight": 1.0}) + "\n" for r in rows))
    runs = {}
    for name, dev, prec in (("cuda_bf16", DEV, "bf16"), ("cuda_fp32", DEV, "fp32"), ("cpu_fp32", "cpu", "fp32")):
        cfg = LoraTrainConfig(epochs=1, batch_size=8, max_length=192, checkpoint_every=0, device=dev, precision=prec,
                              max_steps_this_run=None if dev == DEV else 4)
        losses = []
        _reset_peak()
        t0 = time.perf_counter()
        out = train_lora(data, model, work / name, cfg, progress=lambda s, n, loss: losses.append(loss))
        sec = time.perf_counter() - t0
        runs[name] = {"steps": len(losses), "seconds": round(sec, 2), "s_per_step": round(sec / max(1, len(losses)), 4),
                      "first_loss": losses[0], "last_loss": losses[-1], "finite": bool(np.isfinite(losses).all()),
                      "gpu_peak_mb": round(_peak() / 2**20, 1) if dev == DEV else None}
        if name == "cuda_bf16":
            adapter = out
        print("lora", name, json.dumps(runs[name]), flush=True)
    report["lora"] = runs
    prompts = [r["prompt"] for r in rows[:64]]
    m, tok = load_for_eval(str(model), adapter, device=DEV)
    generate(m, tok, prompts[:8], max_new_tokens=8, batch_size=8)  # warm-up
    _, sec = timed(generate, m, tok, prompts, 48, 32)
    report["generate_cuda_bf16"] = {"prompts": len(prompts), "max_new_tokens": 48, "batch": 32, "seconds": round(sec, 2),
                                    "dtype": str(next(m.parameters()).dtype)}
    try:
        from sot_core.embed.llm_encoder import LastTokenEncoder

        enc = LastTokenEncoder(str(model))
        resp = [r["response"] for r in rows]
        emb, sec = timed(enc.encode, [r["prompt"] for r in rows], resp)
        report["llm_encoder_cuda"] = {"rows": len(rows), "seconds": round(sec, 2), "dim": int(emb.shape[1]),
                                      "finite": bool(np.isfinite(emb).all())}
    except Exception as exc:  # report, do not hide
        report["llm_encoder_cuda"] = {"error": repr(exc)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--model-files", type=Path, default=ROOT / ".sot/models/smollm2-135m-instruct",
                    help="folder with config.json and tokenizer files of the LoRA test model")
    ap.add_argument("--sizes", type=int, nargs="*", default=[5000, 50000])
    ap.add_argument("--knn-size", type=int, default=1_000_000)
    ap.add_argument("--lora-steps", type=int, default=40)
    ap.add_argument("--dry-run-cpu", action="store_true", help="run every section on the CPU (tests this script)")
    args = ap.parse_args()
    import torch

    global DEV
    if args.dry_run_cpu:
        DEV = "cpu"
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return
    import faiss

    report = {"machine": {"gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else "none (dry run)", "torch": torch.__version__, "cpu_count": os.cpu_count(),
                          "python": platform.python_version(), "faiss": faiss.__version__, "faiss_gpus": _faiss_gpus()},
              "ot_dense": {}}

    def save():
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        os.replace(tmp, args.json)

    for name, fn in (("ot", lambda: ot_section(args.sizes, args.knn_size, report)),
                     ("lora", lambda: lora_section(args.model_files, report, args.lora_steps))):
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:
            report[f"{name}_error"] = traceback.format_exc()
            print(report[f"{name}_error"], flush=True)
        report[f"{name}_section_s"] = round(time.perf_counter() - t0, 1)
        save()
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
