"""Benchmarks of SOT curation; run each from the repository root as `python -m benchmarks.NAME`.

Curation quality (labelled pools, no training; share `benchmarks.common`):

* ``curation_quality``    SOT and its ablations against the instance-level baselines on every pool.
* ``general_pool_seeds``  the general-instruction pool over many draws: means, spreads, draws won.
* ``refusal_anchor``      a composite anchor (task rows + refusals) at several refusal shares.
* ``refusal_views``       different embedding views for the pull and the push.
* ``selection_budget``    the harmful-row budget and the refusal guard: general pool, contamination
  sweep, clean task pools, apology-then-comply rows.
* ``aligned_states``      the aligned model's last-token states, every layer, against MiniLM as the
  budget's representation; its refusal likelihood of a prompt.
* ``aligned_budget``      the whole budget on those states, alone and beside MiniLM
  (``--encoder minilm+hf:MODEL:pair@29``), general pool and contamination sweep.
* ``review_queue``        where the harmful rows a selection keeps rank in its ``review.jsonl`` queue.
* ``sweep_misses``        which injected harmful rows the sweep keeps, draw after draw.

Solver and pipeline:

* ``ot_scaling``           our push-pull solver against a POT loop, 5k to 1M rows; ``--knn-error``.
* ``gpu_check``            the CUDA paths (OT solve, LoRA training, generation, LLM encoder).
* ``nightly_incremental``  a nightly re-curation after 1% new rows against a full run.
* ``embed_scaling``        PyTorch against the ONNX int8 encoder: rows/s, quality, 10k rows end to end.

Safety after fine-tuning (train LoRA arms and evaluate them):

* ``safety_e2e``      the five-arm (eight with replay) end-to-end benchmark.
* ``benign_subsets``  two opposite subsets of the benign rows, paired with the e2e's arms.
* ``safety_pilot``    a small two-arm pilot.
* ``replay_dose``     the replay dose chosen on half the held-out prompts, measured on the other half
  (reads the e2e's saved verdicts; trains nothing).
* ``seed_pooled``     two arms compared over their training seeds, paired on the same prompts
  (reads the saved verdicts; trains nothing).

Tests:

* ``mutation``        do the targeted tests fail on deliberately broken copies of the solver,
  costs and selection (a hand-picked mutant set)?

Shared, not run: ``common`` (inputs, embedding, draws), ``budget_arms`` (the arms of
``selection_budget`` and ``aligned_budget``), ``aligned_model`` (the aligned model's states, cached, and the views of them).

Each module's docstring gives its protocol and options; results go to
``benchmarks/results/<benchmark>/`` and are summarised in ``benchmarks/RESULTS.md``.
``ot_scaling`` and ``gpu_check`` import only ``sot_core``, so they also run by path
(``python benchmarks/ot_scaling.py``).
"""
