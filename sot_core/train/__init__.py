"""Training: weighted LoRA fine-tuning on a curated dataset, and safety replay.

`train_lora` fine-tunes with each sample's loss weighted, checkpointed and exactly resumable;
`read_curated` validates its input; `mix_replay` / `write_replay_mix` add trusted refusal rows.

`sot_core.train.align` (the recipe of the safety-aligned base model, also a command:
``python -m sot_core.train.align``) is imported on its own, not from here, so that running it
as a module does not import it twice.
"""
from sot_core.train.lora import read_curated, train_lora
from sot_core.train.replay import mix_replay, write_replay_mix

__all__ = ["mix_replay", "read_curated", "train_lora", "write_replay_mix"]
