"""SOT: safety curation of LLM fine-tuning data with push-pull optimal transport.

The library, in groups (each package's docstring lists its public names):

* `sot_core.data`: loading rows from files into the canonical schema; the store (Parquet + DuckDB).
* `sot_core.embed`: encoders that turn rows into unit vectors (MiniLM, LLM last-token states).
* `sot_core.ot`: cosine costs, log-domain Sinkhorn and the push-pull weights.
* `sot_core.curate`: the curation stages, selection and publishing, quality, baselines, nightly runs.
* `sot_core.models`: loading causal LMs offline, chat templates, generation, device choice.
* `sot_core.train`: weighted LoRA fine-tuning, safety replay, the aligned-base recipe.
* `sot_core.eval`: safety and utility evaluation, refusal judges, paired comparisons.

Shared by all of them: `sot_core.config` (every user-facing default), `sot_core.errors`,
`sot_core.io` (store home, digests, atomic writes) and `sot_core.refusals` (the keyword refusal
heuristic). Dependencies point one way: curation never imports training or evaluation, and the
OT solver imports without FAISS. The library imports no Prefect.
"""
