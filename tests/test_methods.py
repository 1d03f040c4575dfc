"""Every fine-tuning method against the fake API over loopback, newest-first and oldest-first.

A supervised job (no `method`, the older top-level hyperparameters), a DPO job and a reinforcement
(RFT) job with two graders: every numeric field of the RFT checkpoints and of its newest metrics
event exported exactly under its derived name, the per-grader rewards, error rates and phase
times, a field added between two polls at the next poll, the method on job_info, the
hyperparameters, the best checkpoint, and the fields that cannot be metrics skipped, counted and
logged once.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer
from tests.helpers import (
    API_KEY,
    DrainedExporterProcess,
    Samples,
    expected_best_checkpoint,
    expected_job_samples,
    parse_samples,
    require_tool,
    wait_for,
)

pytestmark = pytest.mark.integration

SFT, DPO, RFT = "ftjob-sft", "ftjob-dpo", "ftjob-rft"

DPO_METHOD = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": "auto", "batch_size": 8}}}
RFT_METHOD = {
    "type": "reinforcement",
    "reinforcement": {
        "hyperparameters": {
            "n_epochs": 2,
            "batch_size": "auto",
            "learning_rate_multiplier": 0.5,
            "reasoning_effort": "medium",
            "compute_multiplier": 1.5,
            "eval_interval": 5,
            "eval_samples": 10,
        },
        "grader": {"type": "multi", "graders": {}, "calculate_output": "0.5 * exact + 0.5 * judge"},
    },
}

# RFT checkpoints: rewards instead of losses; the full validation reward peaks at step 10. Step 15
# has no full_valid_mean_reward (it does not count for the best checkpoint).
RFT_CHECKPOINTS = {
    5: {"train_mean_reward": 0.25, "full_valid_mean_reward": 0.375, "completion_tokens_mean": 210},
    10: {"train_mean_reward": 0.5, "full_valid_mean_reward": 0.625, "completion_tokens_mean": 260},
    15: {"train_mean_reward": 0.75, "valid_mean_reward": 0.875, "completion_tokens_mean": 300},
    20: {"train_mean_reward": 0.8125, "full_valid_mean_reward": 0.5, "completion_tokens_mean": 420},
}
# What a checkpoint or event may also carry that is no metric: a name that is not one, a boolean, a
# string, a null.
NOT_METRICS = {"Mean-Reward": 1.0, "is_final": True, "note": "x", "gap": None}
# A field whose name ends in a suffix Prometheus reserves is exported with _value appended.
COUNTS = {"sample_parse_error_count": 3}
EXPORTED_AS = {"sample_parse_error_count": "sample_parse_error_count_value"}


def rft_event(step: int, **more: Any) -> dict[str, Any]:
    """A metrics event's data as the RFT guide shows it: top-level numbers and nested parts."""
    return {
        "step": step,
        "total_steps": 40,
        "train_mean_reward": 0.5 + step / 100,
        "valid_mean_reward": 0.4375,
        "full_valid_mean_reward": 0.375,
        "completion_tokens_mean": 250.5,
        "reasoning_tokens_mean": 1200,
        "mean_unresponsive_rewards": 0.0625,
        **NOT_METRICS,
        **COUNTS,
        "scores": {
            "train_reward_mean": 0.5,
            "valid_reward_mean": 0.4375,
            "graders": [
                {
                    "name": "exact",
                    "type": "string_check",
                    "train_reward_mean": 0.75,
                    "valid_reward_mean": 0.5,
                },
                {"name": 'judge "gpt"\n', "type": "score_model", "train_reward_mean": 0.25},
            ],
        },
        "errors": {
            "graders": [
                {"name": "exact", "other_error_mean": 0.0, "sample_parse_error_mean": 0.125},
                {"name": 'judge "gpt"\n', "other_error_mean": 0.03125, "valid_other_error_mean": 0.5},
            ]
        },
        "usage": {"prompt_tokens": 1000},
        "timing": {"step": {"sampling": 12.5, "training": 3.25, "eval": 0.0, "full_iteration": 16.0}},
        **more,
    }


def populate(api: FakeApi, newest_first: bool) -> None:
    # Supervised: the valid loss falls to its minimum at step 200, then rises.
    api.add_job(SFT, newest_first=newest_first)
    for step, loss in ((100, 0.9), (200, 0.5), (300, 0.625), (400, 0.75)):
        api.add_checkpoint(
            SFT, step, {"train_loss": loss / 2, "valid_loss": loss + 0.25, "full_valid_loss": loss}
        )
    # DPO: only batch validation losses; the lowest at step 2 (0.25, as step 3: the earlier wins).
    api.add_job(DPO, method=DPO_METHOD, newest_first=newest_first)
    for step, loss in ((1, 0.5), (2, 0.25), (3, 0.25)):
        api.add_checkpoint(DPO, step, {"train_loss": 0.6, "valid_loss": loss})
    api.add_job(RFT, method=RFT_METHOD, newest_first=newest_first, model="o4-mini-2025-04-16")
    for step, metrics in RFT_CHECKPOINTS.items():
        api.add_checkpoint(RFT, step, {**metrics, **NOT_METRICS, **COUNTS})
    api.add_event(RFT, "Step 19/40", data=rft_event(19), created_at=1_800_000_019)
    api.add_event(RFT, "Step 20/40", data=rft_event(20), created_at=1_800_000_020)


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def expected_rft_checkpoints(api: FakeApi) -> Samples:
    """Every numeric field of every RFT checkpoint under openai_fine_tuning_checkpoint_<field>."""
    out: Samples = {}
    for checkpoint in api.jobs[RFT].checkpoints:
        step = str(checkpoint["step_number"])
        for field, value in checkpoint["metrics"].items():
            if field != "step" and field not in NOT_METRICS:
                name = EXPORTED_AS.get(field, field)
                out[(f"openai_fine_tuning_checkpoint_{name}", labels(job_id=RFT, step=step))] = value
    return out


def expected_rft_live(data: dict[str, Any]) -> Samples:
    job = labels(job_id=RFT)
    out: Samples = {
        (f"openai_fine_tuning_job_{EXPORTED_AS.get(field, field)}", job): value
        for field, value in data.items()
        if field not in NOT_METRICS and type(value) in (int, float)
    }
    judge = 'judge "gpt"\n'
    out |= {
        (
            "openai_fine_tuning_job_grader_reward_mean",
            labels(job_id=RFT, grader="exact", split="train"),
        ): 0.75,
        ("openai_fine_tuning_job_grader_reward_mean", labels(job_id=RFT, grader="exact", split="valid")): 0.5,
        ("openai_fine_tuning_job_grader_reward_mean", labels(job_id=RFT, grader=judge, split="train")): 0.25,
    }
    rate = "openai_fine_tuning_job_grader_error_rate"
    out |= {
        (rate, labels(job_id=RFT, grader="exact", split="train", error="other_error")): 0.0,
        (rate, labels(job_id=RFT, grader="exact", split="train", error="sample_parse_error")): 0.125,
        (rate, labels(job_id=RFT, grader=judge, split="train", error="other_error")): 0.03125,
        (rate, labels(job_id=RFT, grader=judge, split="valid", error="other_error")): 0.5,
    }
    for phase, seconds in data["timing"]["step"].items():
        out[("openai_fine_tuning_job_step_phase_seconds", labels(job_id=RFT, phase=phase))] = seconds
    return out


def expected(api: FakeApi, newest_data: dict[str, Any]) -> Samples:
    out: Samples = {}
    for job in api.jobs.values():
        document = job.document()
        out |= expected_job_samples(document)
        method = (document.get("method") or {"type": "supervised"})["type"]
        out |= expected_best_checkpoint(job.id, job.checkpoints, method)
        latest = max(c["step_number"] for c in job.checkpoints)
        out[("openai_fine_tuning_job_latest_step", labels(job_id=job.id))] = latest
    return out | expected_rft_checkpoints(api) | expected_rft_live(newest_data)


KNOWN_SUPERVISED = {
    "openai_fine_tuning_checkpoint_train_loss",
    "openai_fine_tuning_checkpoint_valid_loss",
    "openai_fine_tuning_checkpoint_full_valid_loss",
    "openai_fine_tuning_checkpoint_created_timestamp_seconds",
    "openai_fine_tuning_checkpoint_info",
    "openai_fine_tuning_job_events_total",
}


def exported(exporter: DrainedExporterProcess) -> Samples:
    """The method series: everything of openai_fine_tuning_* but the supervised checkpoint series
    (which tests/test_e2e.py checks) and the event counters."""
    text = exporter.metrics()
    samples = {
        **parse_samples(text, "openai_fine_tuning_checkpoint_"),
        **parse_samples(text, "openai_fine_tuning_job_"),
    }
    return {
        key: value
        for key, value in samples.items()
        if key[0] not in KNOWN_SUPERVISED
        and (dict(key[1])["job_id"] == RFT or not key[0].startswith("openai_fine_tuning_checkpoint_"))
    }


def field_errors(exporter: DrainedExporterProcess) -> dict[str, float]:
    samples = parse_samples(exporter.metrics(), "ckpt_exporter_api_errors_total")
    return {dict(key[1])["reason"]: value for key, value in samples.items() if dict(key[1])["job_id"] == RFT}


@pytest.mark.parametrize("newest_first", [True, False], ids=["newest-first", "oldest-first"])
def test_every_method_exported_exactly(newest_first: bool) -> None:
    api = FakeApi(api_key=API_KEY)
    populate(api, newest_first)
    with FakeApiServer(api) as server:
        exporter = DrainedExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": server.base_url,
                "CKPT_EXPORTER_API_KEY": API_KEY,
                "CKPT_EXPORTER_JOBS": f"{SFT},{DPO},{RFT}",
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.3",
                "CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "1000",
            }
        )
        try:
            exporter.wait_ready()
            want = expected(api, rft_event(20))
            assert wait_for(lambda: exported(exporter) == want, 10), sorted(
                set(exported(exporter).items()) ^ set(want.items())
            )
            # The best checkpoints, spelled out: step 200 (lowest full_valid_loss, which rose after
            # it), step 2 (lowest valid_loss, the earlier of a tie), step 10 (highest
            # full_valid_mean_reward; step 15 has none).
            best = {
                dict(key[1])["job_id"]: (dict(key[1])["metric"], value)
                for key, value in want.items()
                if key[0] == "openai_fine_tuning_job_best_checkpoint_step"
            }
            assert best == {
                SFT: ("full_valid_loss", 200),
                DPO: ("valid_loss", 2),
                RFT: ("full_valid_mean_reward", 10),
            }

            # A field the API adds, in an event and in a new checkpoint: exported at the next poll.
            newer = rft_event(21, kl_divergence_mean=0.015625)
            api.add_event(RFT, "Step 21/40", data=newer, created_at=1_800_000_021)
            api.add_checkpoint(
                RFT, 25, {"train_mean_reward": 0.875, "full_valid_mean_reward": 0.6875, "pass_rate": 0.5}
            )
            want = expected(api, newer)
            assert ("openai_fine_tuning_job_kl_divergence_mean", labels(job_id=RFT)) in want
            assert ("openai_fine_tuning_checkpoint_pass_rate", labels(job_id=RFT, step="25")) in want
            assert wait_for(lambda: exported(exporter) == want, 10), sorted(
                set(exported(exporter).items()) ^ set(want.items())
            )

            # The field name that cannot be a metric, counted once however often it comes.
            assert field_errors(exporter) == {"invalid_field": 1.0}
        finally:
            log = exporter.stop()
    skipped = [line for line in log.splitlines() if "skipped a field" in line]
    assert len(skipped) == 1, skipped
    assert "'Mean-Reward' is not a metric name" in skipped[0], skipped


def test_method_metrics_pass_promtool() -> None:
    promtool = require_tool("promtool")
    api = FakeApi(api_key=API_KEY)
    populate(api, newest_first=True)
    with FakeApiServer(api) as server:
        exporter = DrainedExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": server.base_url,
                "CKPT_EXPORTER_API_KEY": API_KEY,
                "CKPT_EXPORTER_JOBS": f"{SFT},{DPO},{RFT}",
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.3",
                "CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "1000",
            }
        )
        try:
            exporter.wait_ready()
            assert wait_for(lambda: "openai_fine_tuning_job_step_phase_seconds{" in exporter.metrics(), 10)
            text = exporter.metrics()
        finally:
            exporter.stop()
    for family in ("grader_reward_mean", "grader_error_rate", "hyperparameter", "best_checkpoint_step"):
        assert f"openai_fine_tuning_job_{family}{{" in text, family
    assert "openai_fine_tuning_checkpoint_full_valid_mean_reward{" in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_a_job_exports_at_most_64_other_fields() -> None:
    """The 65th distinct field of a job and those after it are skipped, counted and logged once."""
    api = FakeApi(api_key=API_KEY)
    api.add_job("ftjob-wide", method=RFT_METHOD)
    data = {"step": 1, **{f"metric_{n:02d}": n / 4 for n in range(70)}}
    api.add_event("ftjob-wide", "Step 1/2", data=data)
    with FakeApiServer(api) as server:
        exporter = DrainedExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": server.base_url,
                "CKPT_EXPORTER_API_KEY": API_KEY,
                "CKPT_EXPORTER_JOBS": "ftjob-wide",
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.3",
            }
        )
        try:
            exporter.wait_ready()
            job = labels(job_id="ftjob-wide")
            want = {(f"openai_fine_tuning_job_metric_{n:02d}", job): n / 4 for n in range(64)}
            assert wait_for(
                lambda: parse_samples(exporter.metrics(), "openai_fine_tuning_job_metric_") == want, 10
            )
            api.add_event("ftjob-wide", "Step 2/2", data={**data, "step": 2})
            step = {("openai_fine_tuning_job_step", job): 2.0}
            assert wait_for(
                lambda: parse_samples(exporter.metrics(), "openai_fine_tuning_job_step") == step, 10
            )
            errors = parse_samples(exporter.metrics(), "ckpt_exporter_api_errors_total")
            assert errors == {
                ("ckpt_exporter_api_errors_total", labels(job_id="ftjob-wide", reason="too_many_fields")): 6.0
            }
        finally:
            log = exporter.stop()
    skipped = [line for line in log.splitlines() if "(too_many_fields)" in line]
    assert [line.split("): ")[1] for line in skipped] == [
        f"'metric_{n}': the job already exports 64 fields (counted; logged once)" for n in range(64, 70)
    ]
