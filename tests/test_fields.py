"""Which numeric fields become metrics (fields.py), through the models that read them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from ckpt_exporter.families import RESERVED_FIELDS
from ckpt_exporter.fields import MAX_FIELDS_PER_JOB, MAX_GRADERS, FieldBudget
from ckpt_exporter.models import parse_checkpoint, parse_job, parse_metrics_event_data


def checkpoint_metrics(metrics: dict[str, Any]) -> Any:
    parsed = parse_checkpoint(
        {"id": "c", "created_at": 1, "fine_tuning_job_id": "j", "step_number": 1, "metrics": metrics}
    )
    assert not isinstance(parsed, ValidationError), parsed
    return parsed.metrics


def test_every_other_number_is_kept_and_the_known_fields_stay_strict() -> None:
    metrics = checkpoint_metrics(
        {"step": 1, "train_loss": 0.5, "train_mean_reward": 0.25, "reasoning_tokens_mean": 900, "flag": True}
    )
    assert metrics.train_loss == 0.5
    assert metrics.extra == (("train_mean_reward", 0.25), ("reasoning_tokens_mean", 900.0))
    assert metrics.skipped == ()
    assert metrics.value("train_mean_reward") == 0.25 and metrics.value("train_loss") == 0.5
    for bad in ("0.5", True):
        rejected = parse_checkpoint(
            {
                "id": "c",
                "created_at": 1,
                "fine_tuning_job_id": "j",
                "step_number": 1,
                "metrics": {"valid_loss": bad},
            }
        )
        assert isinstance(rejected, ValidationError)


def test_names_that_cannot_be_metric_names_are_skipped_with_a_reason() -> None:
    metrics = checkpoint_metrics({"Reward": 1, "a-b": 2, "ok_mean": 5, "big": 1e400})
    assert metrics.extra == (("ok_mean", 5.0),)
    assert metrics.skipped == (
        ("invalid_field", "'Reward' is not a metric name ([a-z][a-z0-9_]*)"),
        ("invalid_field", "'a-b' is not a metric name ([a-z][a-z0-9_]*)"),
        ("invalid_field", "big: not a finite number"),
    )


def test_a_reserved_suffix_is_exported_with_value_appended() -> None:
    metrics = checkpoint_metrics(
        {"x_total": 3, "n_bucket": 4, "errors_count": 5, "y_count": 6, "y_count_value": 7}
    )
    assert metrics.extra == (
        ("x_total_value", 3.0),
        ("n_bucket_value", 4.0),
        ("errors_count_value", 5.0),
        ("y_count_value", 7.0),
    )
    assert metrics.skipped == (
        ("invalid_field", "y_count: exported as y_count_value, which the API also sends"),
    )


def test_the_nested_parts_of_a_reinforcement_event() -> None:
    data = parse_metrics_event_data(
        {
            "step": 4,
            "total_steps": 10,
            "scores": {
                "graders": [{"name": "g", "train_reward_mean": 0.5, "valid_mean_reward": 0.25}, {"type": "x"}]
            },
            "errors": {
                "graders": [{"name": "g", "other_error_mean": 0.0, "valid_sample_parse_error_mean": 0.5}]
            },
            "timing": {"step": {"sampling": 2.0, "eval": "n/a"}},
        }
    )
    assert data.extra == ()
    assert data.grader_rewards == (("g", "train", 0.5), ("g", "valid", 0.25))
    assert data.grader_errors == (
        ("g", "train", "other_error", 0.0),
        ("g", "valid", "sample_parse_error", 0.5),
    )
    assert data.phases == (("sampling", 2.0),)


@pytest.mark.parametrize(
    "data",
    [
        {"scores": [1, 2], "errors": "none", "timing": {"step": [1]}},
        {"scores": {"graders": {"name": "g"}}, "errors": {"graders": [None, 3]}, "timing": None},
    ],
)
def test_parts_of_another_shape_give_nothing(data: dict[str, Any]) -> None:
    parsed = parse_metrics_event_data({"step": 1, **data})
    assert (parsed.grader_rewards, parsed.grader_errors, parsed.phases, parsed.skipped) == ((), (), (), ())


def test_the_number_of_graders_is_bounded() -> None:
    graders = [{"name": f"g{n}", "train_reward_mean": 1.0} for n in range(MAX_GRADERS + 4)]
    data = parse_metrics_event_data({"scores": {"graders": graders}})
    assert [grader for grader, _, _ in data.grader_rewards] == [f"g{n}" for n in range(MAX_GRADERS)]
    assert data.skipped == (("too_many_fields", f"{MAX_GRADERS + 4} graders, more than {MAX_GRADERS}"),)


def test_a_job_s_field_budget() -> None:
    budget = FieldBudget(RESERVED_FIELDS)
    names = [f"f{n}" for n in range(MAX_FIELDS_PER_JOB + 2)]
    refused = budget.admit([*names, "info", "status"])
    assert budget.admitted == set(names[:MAX_FIELDS_PER_JOB])
    assert refused == (
        ("too_many_fields", f"'f{MAX_FIELDS_PER_JOB}': the job already exports {MAX_FIELDS_PER_JOB} fields"),
        (
            "too_many_fields",
            f"'f{MAX_FIELDS_PER_JOB + 1}': the job already exports {MAX_FIELDS_PER_JOB} fields",
        ),
        ("invalid_field", "'info' is the name of another metric"),
        ("invalid_field", "'status' is the name of another metric"),
    )
    # Asked again, the admitted stay admitted and the same refusals come back: the job counts and
    # logs each once (tests/test_methods.py).
    assert budget.admit([*names, "info"]) == (*refused[:3],)
    assert budget.admitted == set(names[:MAX_FIELDS_PER_JOB])


def test_the_method_of_a_job() -> None:
    base = {"id": "j", "status": "running", "created_at": 1}
    legacy = parse_job(
        {**base, "hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2}}
    )
    assert (legacy.method, legacy.hyperparameters) == (
        "supervised",
        (("n_epochs", 3.0), ("learning_rate_multiplier", 2.0)),
    )
    rft = parse_job(
        {
            **base,
            "hyperparameters": {"n_epochs": 9},
            "method": {
                "type": "reinforcement",
                "reinforcement": {
                    "hyperparameters": {
                        "eval_samples": 4,
                        "reasoning_effort": "high",
                        "compute_multiplier": "auto",
                    },
                    "grader": {"type": "score_model"},
                },
            },
        }
    )
    assert (rft.method, rft.hyperparameters, rft.reasoning_effort, rft.grader_type) == (
        "reinforcement",
        (("eval_samples", 4.0),),
        "high",
        "score_model",
    )
    odd = parse_job({**base, "method": {"type": 7, "dpo": "x"}})
    assert (odd.method, odd.hyperparameters) == ("unknown", ())


HUGE = 10**400  # an integer JSON allows and no float holds


def test_an_integer_too_large_for_a_float_is_a_skipped_field_not_a_crash() -> None:
    assert checkpoint_metrics({"train_loss": 0.5, "big": HUGE}).extra == ()
    event = parse_metrics_event_data(
        {
            "step": 1,
            "big": HUGE,
            "scores": {"graders": [{"name": "g", "train_reward_mean": HUGE, "valid_reward_mean": 0.5}]},
            "timing": {"step": {"sampling": HUGE, "eval": 2.0}},
        }
    )
    assert event.extra == ()
    assert event.skipped == (("invalid_field", "big: not a finite number"),)
    assert event.grader_rewards == (("g", "valid", 0.5),)
    assert event.phases == (("eval", 2.0),)
    job = parse_job(
        {
            "id": "ftjob-1",
            "status": "running",
            "created_at": 1,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": HUGE, "n_epochs": 3}}},
        }
    )
    assert job.hyperparameters == (("n_epochs", 3.0),)


def test_a_grader_given_twice_is_one_series_the_first() -> None:
    event = parse_metrics_event_data(
        {
            "scores": {
                "graders": [{"name": "g", "train_reward_mean": 0.5}, {"name": "g", "train_reward_mean": 0.25}]
            },
            "errors": {"graders": [{"name": "h", "other_error_mean": 0.5, "train_other_error_mean": 0.25}]},
        }
    )
    assert event.grader_rewards == (("g", "train", 0.5),)
    assert event.grader_errors == (("h", "train", "other_error", 0.5),)


def test_a_grader_name_no_exposition_can_write_is_left_out() -> None:
    event = parse_metrics_event_data(
        {
            "scores": {
                "graders": [
                    {"name": "g\ud800", "train_reward_mean": 0.5},
                    {"name": "ok", "train_reward_mean": 0.75},
                ]
            }
        }
    )
    assert event.grader_rewards == (("ok", "train", 0.75),)
