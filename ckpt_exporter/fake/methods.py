"""The fine-tuning methods beside supervised: DPO and reinforcement (RFT) jobs' documents and the
metrics their checkpoints and metrics events carry, for the demo and the tests.

A job's `method` is as the API returns it (OpenAI's FineTuneMethod schema):

    {"type": "dpo", "dpo": {"hyperparameters": {"beta", "n_epochs", "batch_size",
                                                "learning_rate_multiplier"}}}
    {"type": "reinforcement", "reinforcement": {"hyperparameters": {"reasoning_effort",
        "compute_multiplier", "eval_interval", "eval_samples", "n_epochs", "batch_size",
        "learning_rate_multiplier"}, "grader": {"type": "multi", "name", "graders": {<name>: grader},
        "calculate_output"}}}

The multi grader's `graders` is a map of named graders, as OpenAI's graders guide, its RFT
examples and Foundry's portal send it (the OpenAPI document describes a single grader there).
Its two graders: `correctness` (string_check) and `explanation` (score_model), combined as
0.5 * correctness + 0.5 * explanation; each grader's `name` is its key.

An RFT metrics event's `data`, the shape of the example event in OpenAI's RFT guide ("Training
metrics"), with every number consistent (scores.train_reward_mean = train_mean_reward = the
graders' weighted mean):

    step, total_steps, train_mean_reward, full_valid_mean_reward, completion_tokens_mean,
    reasoning_tokens_mean, valid_reasoning_tokens_mean, mean_unresponsive_rewards,
    full_valid_mean_parse_error                                        (top-level numbers)
    scores: {train_reward_mean, valid_reward_mean,
             graders: [{name, type, train_reward_mean, valid_reward_mean}, ...]}
    errors: {graders: [{name, type, <split>_<error>_mean, <split>_<error>_count, ...}]}
            split: train | valid; error: sample_parse_error | invalid_variable_error | other_error
    timing: {step: {sampling, training, eval, full_iteration},
             graders: [{name, type, train_execution_latency_mean, valid_execution_latency_mean}]}
    usage: {graders: [{name, type[, model], <split>_prompt_tokens_mean|count,
                       <split>_completion_tokens_mean|count}],
            samples: {<split>_reasoning_tokens_mean|count}}
    model_graders_token_usage: {<model>: {train_prompt_tokens, ...}}

Its message: "Step 10/20 , train mean reward=0.42, full validation mean reward=0.68, full
validation mean parse error=0.00" (the guide's, spacing included). An RFT checkpoint's metrics:
step, train_mean_reward, full_valid_mean_reward, full_valid_mean_parse_error,
completion_tokens_mean, reasoning_tokens_mean, mean_unresponsive_rewards.

A DPO job reports losses like a supervised one (OpenAI documents no DPO-specific field): its
events train_loss and valid_loss, its checkpoints train_loss, valid_loss and full_valid_loss;
the loss starts near ln 2 = 0.693, where a DPO loss starts, and falls.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

GRADER_MODEL = "gpt-4o-2024-08-06"
GRADERS = (("correctness", "string_check"), ("explanation", "score_model"))
ERRORS = ("sample_parse_error", "invalid_variable_error", "other_error")


def dpo_method(
    beta: float = 0.1, n_epochs: int = 2, batch_size: int = 8, learning_rate_multiplier: float = 0.5
) -> dict[str, Any]:
    hyperparameters = {
        "beta": beta,
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": learning_rate_multiplier,
    }
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def reinforcement_method(
    reasoning_effort: str = "medium",
    compute_multiplier: float = 1.0,
    eval_interval: int = 5,
    eval_samples: int = 4,
    n_epochs: int = 1,
    batch_size: int = 16,
    learning_rate_multiplier: float = 1.0,
) -> dict[str, Any]:
    hyperparameters = {
        "reasoning_effort": reasoning_effort,
        "compute_multiplier": compute_multiplier,
        "eval_interval": eval_interval,
        "eval_samples": eval_samples,
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": learning_rate_multiplier,
    }
    return {
        "type": "reinforcement",
        "reinforcement": {"hyperparameters": hyperparameters, "grader": _grader()},
    }


def _grader() -> dict[str, Any]:
    correctness = {
        "type": "string_check",
        "name": "correctness",
        "input": "{{sample.output_json.answer}}",
        "reference": "{{item.answer}}",
        "operation": "eq",
    }
    explanation = {
        "type": "score_model",
        "name": "explanation",
        "input": [{"role": "user", "type": "message", "content": "Grade the explanation from 0 to 1."}],
        "model": GRADER_MODEL,
        "range": [0, 1],
    }
    return {
        "type": "multi",
        "name": "answer_and_explanation",
        "graders": {"correctness": correctness, "explanation": explanation},
        "calculate_output": "0.5 * correctness + 0.5 * explanation",
    }


def top_hyperparameters(method: dict[str, Any]) -> dict[str, Any]:
    """The job's top-level `hyperparameters`, which the API fills from the method's."""
    chosen = method[method["type"]]["hyperparameters"]
    return {name: chosen[name] for name in ("n_epochs", "batch_size", "learning_rate_multiplier")}


@dataclass(frozen=True)
class StepMetrics:
    """What one step of a simulated job reports: its checkpoint's metrics, its metrics event."""

    checkpoint: dict[str, Any]
    event: dict[str, Any]
    message: str


def dpo_step(step: int, total_steps: int, rng: random.Random) -> StepMetrics:
    progress = step / total_steps
    train_loss = round(0.6931 * math.exp(-2.2 * progress) + 0.12 + rng.uniform(-0.02, 0.02), 4)
    valid_loss = round(train_loss * 1.06 + rng.uniform(0, 0.03), 4)
    full_valid_loss = round(valid_loss * 0.99, 4)
    return StepMetrics(
        checkpoint={"train_loss": train_loss, "valid_loss": valid_loss, "full_valid_loss": full_valid_loss},
        event={"step": step, "total_steps": total_steps, "train_loss": train_loss, "valid_loss": valid_loss},
        message=f"Step {step}/{total_steps}: training loss={train_loss}",
    )


def rft_step(step: int, total_steps: int, rng: random.Random) -> StepMetrics:
    """An RFT step: rewards that climb and level off, validation a little behind training."""
    progress = step / total_steps
    rise = 1 - math.exp(-3.0 * progress)
    rewards = {
        "correctness": (0.30 + 0.55 * rise + rng.uniform(-0.03, 0.03), 0.28 + 0.50 * rise),
        "explanation": (0.45 + 0.30 * rise + rng.uniform(-0.02, 0.02), 0.44 + 0.27 * rise),
    }
    rewards = {name: (round(train, 4), round(valid, 4)) for name, (train, valid) in rewards.items()}
    train_reward = round(sum(0.5 * train for train, _ in rewards.values()), 4)
    valid_reward = round(sum(0.5 * valid for _, valid in rewards.values()), 4)
    completion = round(1400 + 500 * progress + rng.uniform(-40, 40), 2)
    reasoning = round(completion * 0.96, 2)
    parse_error = round(max(0.0, 0.04 * (1 - rise)), 4)
    top = {
        "train_mean_reward": train_reward,
        "full_valid_mean_reward": valid_reward,
        "completion_tokens_mean": completion,
        "reasoning_tokens_mean": reasoning,
        "valid_reasoning_tokens_mean": round(reasoning * 0.9, 2),
        "mean_unresponsive_rewards": 0.0,
        "full_valid_mean_parse_error": parse_error,
    }
    event = {
        "step": step,
        "total_steps": total_steps,
        **top,
        "scores": _scores(rewards, train_reward, valid_reward),
        "errors": {"graders": [_grader_errors(name, kind, parse_error) for name, kind in GRADERS]},
        "timing": _timing(rng),
        "usage": _usage(reasoning),
        "model_graders_token_usage": {GRADER_MODEL: _grader_tokens()},
    }
    checkpoint = {key: top[key] for key in top if key != "valid_reasoning_tokens_mean"}
    message = (
        f"Step {step}/{total_steps} , train mean reward={train_reward:.2f}, full validation mean "
        f"reward={valid_reward:.2f}, full validation mean parse error={parse_error:.2f}"
    )
    return StepMetrics(checkpoint=checkpoint, event=event, message=message)


def _scores(rewards: dict[str, tuple[float, float]], train: float, valid: float) -> dict[str, Any]:
    graders = [
        {
            "name": name,
            "type": kind,
            "train_reward_mean": rewards[name][0],
            "valid_reward_mean": rewards[name][1],
        }
        for name, kind in GRADERS
    ]
    return {"graders": graders, "train_reward_mean": train, "valid_reward_mean": valid}


def _grader_errors(name: str, kind: str, parse_error: float) -> dict[str, Any]:
    """Only the model grader meets unparsable samples; no grader fails otherwise."""
    entry: dict[str, Any] = {"name": name, "type": kind}
    for split in ("train", "valid"):
        for error in ERRORS:
            mean = parse_error if (error == "sample_parse_error" and kind == "score_model") else 0.0
            entry[f"{split}_{error}_mean"] = mean
            entry[f"{split}_{error}_count"] = float(round(mean * 500))
    return entry


def _timing(rng: random.Random) -> dict[str, Any]:
    phases = {
        "sampling": round(220 + rng.uniform(-15, 15), 3),
        "training": round(400 + rng.uniform(-20, 20), 3),
        "eval": round(100 + rng.uniform(-8, 8), 3),
    }
    step = {**phases, "full_iteration": round(sum(phases.values()) + 4.5, 3)}
    latency = {"correctness": (0.002, 0.002), "explanation": (2.69, 4.14)}  # seconds (train, valid)
    graders = [
        {
            "name": name,
            "type": kind,
            "train_execution_latency_mean": latency[name][0],
            "valid_execution_latency_mean": latency[name][1],
        }
        for name, kind in GRADERS
    ]
    return {"step": step, "graders": graders}


def _usage(reasoning: float) -> dict[str, Any]:
    model_grader = {
        "name": "explanation",
        "type": "score_model",
        "model": GRADER_MODEL,
        "train_prompt_tokens_mean": 241.0,
        "valid_prompt_tokens_mean": 241.0,
        "train_prompt_tokens_count": 120741.0,
        "valid_prompt_tokens_count": 4820.0,
        "train_completion_tokens_mean": 138.5,
        "valid_completion_tokens_mean": 140.5,
        "train_completion_tokens_count": 69402.0,
        "valid_completion_tokens_count": 2810.0,
    }
    samples = {
        "train_reasoning_tokens_mean": reasoning,
        "valid_reasoning_tokens_mean": round(reasoning * 0.9, 2),
        "train_reasoning_tokens_count": round(reasoning * 500, 1),
        "valid_reasoning_tokens_count": round(reasoning * 0.9 * 20, 1),
    }
    return {"graders": [model_grader], "samples": samples}


def _grader_tokens() -> dict[str, int]:
    return {
        "eval_cached_tokens": 0,
        "eval_prompt_tokens": 4820,
        "train_cached_tokens": 0,
        "train_prompt_tokens": 120741,
        "eval_completion_tokens": 2810,
        "train_completion_tokens": 69402,
    }
