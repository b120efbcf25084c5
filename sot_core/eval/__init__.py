"""Evaluation: safety and utility of a (LoRA-adapted) causal LM, and paired comparisons.

`evaluate_model` generates on held-out harmful, benign, XSTest and utility prompts
(`eval_sets`: `harmful_prompts`, `benign_eval_prompts`, `xstest_prompts`, `utility_rows`) and
scores them with refusal judges (`judges`: `KeywordJudge`, `LogRegJudge` via
`train_refusal_judge`, `GuardJudge`); `metrics` compares two models prompt by prompt
(`paired_difference`, `compare_arms`, `compare_evaluations`).
"""
from sot_core.eval.eval_sets import (
    benign_eval_prompts, harmful_prompts, prompt_key, shared_data_dir, utility_rows, xstest_prompts,
)
from sot_core.eval.evaluate import evaluate_model, generate, label_accuracy, load_for_eval, safety_metrics
from sot_core.eval.judges import GuardJudge, Judge, KeywordJudge, LogRegJudge, train_refusal_judge
from sot_core.eval.metrics import compare_arms, compare_evaluations, paired_difference

__all__ = ["GuardJudge", "Judge", "KeywordJudge", "LogRegJudge", "benign_eval_prompts", "compare_arms",
           "compare_evaluations", "evaluate_model", "generate", "harmful_prompts", "label_accuracy",
           "load_for_eval", "paired_difference", "prompt_key", "safety_metrics", "shared_data_dir",
           "train_refusal_judge", "utility_rows", "xstest_prompts"]
