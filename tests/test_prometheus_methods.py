"""The dashboard's method rows and the method alerts against a real Prometheus scraping the exporter.

    fake OpenAI API (loopback)  <-  python -m ckpt_exporter  <-  prometheus (scrape 1s, rules 1s)

A supervised job that overfits, a DPO job, a reinforcement (RFT) job whose train reward runs ahead
of its validation reward and whose grader fails, and an RFT job whose reward is flat at 0. Every
query of the supervised, DPO and reinforcement rows (and the checkpoints table's `best` column,
the jobs table's method) returns exactly the series the fake API's data implies, and the four
method alerts go pending for exactly the jobs they should.

Needs the `prometheus` binary (Debian package `prometheus`): skipped without it, failed in CI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ckpt_exporter.fake import FakeApi
from tests.helpers import (
    load_dashboard,
    substitute_grafana_variables,
    wait_for,
)
from tests.promstack import Prometheus, Series, scraped_exporter

pytestmark = pytest.mark.integration

API_KEY = "sk-test"
SFT, DPO, RFT, FLAT = "ftjob-pm-sft", "ftjob-pm-dpo", "ftjob-pm-rft", "ftjob-pm-flat"
JOB_REGEX = f"({SFT}|{DPO}|{RFT}|{FLAT})"
RFT_REGEX = f"({RFT}|{FLAT})"

SFT_CHECKPOINTS = {100: (0.8, 0.9, 0.85), 200: (0.4, 0.7, 0.6), 300: (0.2, 0.8, 0.75)}  # train, valid, full
DPO_CHECKPOINTS = {1: (0.7, 0.75), 2: (0.5, 0.625)}  # train, valid
RFT_CHECKPOINTS = {2: (0.5, 0.375), 4: (0.75, 0.5)}  # train_mean_reward, full_valid_mean_reward
RFT_EVENT = {
    "step": 4,
    "total_steps": 8,
    "train_mean_reward": 0.75,
    "valid_mean_reward": 0.4375,
    "full_valid_mean_reward": 0.5,
    "completion_tokens_mean": 300,
    "reasoning_tokens_mean": 800,
    "scores": {
        "graders": [
            {"name": "exact", "type": "string_check", "train_reward_mean": 0.75, "valid_reward_mean": 0.5},
            {"name": "judge", "type": "score_model", "train_reward_mean": 0.5},
        ]
    },
    "errors": {"graders": [{"name": "exact", "other_error_mean": 0.125, "sample_parse_error_mean": 0.0}]},
    "timing": {"step": {"sampling": 10.0, "training": 2.5, "eval": 1.5, "full_iteration": 14.0}},
}


def rft_method(grader: str, **hyperparameters: Any) -> dict[str, Any]:
    return {
        "type": "reinforcement",
        "reinforcement": {"hyperparameters": hyperparameters, "grader": {"type": grader}},
    }


def populate(api: FakeApi) -> None:
    api.add_job(SFT)
    for step, (train, valid, full) in SFT_CHECKPOINTS.items():
        api.add_checkpoint(SFT, step, {"train_loss": train, "valid_loss": valid, "full_valid_loss": full})
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "n_epochs": 2, "batch_size": "auto"}}}
    api.add_job(DPO, method=dpo)
    for step, (train, valid) in DPO_CHECKPOINTS.items():
        api.add_checkpoint(DPO, step, {"train_loss": train, "valid_loss": valid})
    api.add_job(
        RFT,
        method=rft_method(
            "python", n_epochs=1, eval_interval=2, compute_multiplier=2, reasoning_effort="low"
        ),
    )
    for step, (train, full) in RFT_CHECKPOINTS.items():
        api.add_checkpoint(RFT, step, {"train_mean_reward": train, "full_valid_mean_reward": full})
    api.add_event(RFT, "Step 4/8", data=RFT_EVENT)
    api.add_job(FLAT, method=rft_method("string_check"))
    api.add_event(FLAT, "Step 3/8", data={"step": 3, "total_steps": 8, "train_mean_reward": 0})


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[FakeApi, Prometheus]]:
    api = FakeApi(api_key=API_KEY)
    populate(api)
    with scraped_exporter(api, (SFT, DPO, RFT, FLAT), tmp_path) as (_, prom):
        yield api, prom


def row_targets() -> dict[tuple[str, str, str], tuple[str, bool]]:
    """(row, panel title, refId) -> (expr as Grafana sends it, instant?) of every target."""
    out = {}
    row = ""
    for panel in load_dashboard()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel["targets"]:
            expr = substitute_grafana_variables(target["expr"], JOB_REGEX, reinforcement_job_regex=RFT_REGEX)
            out[(row, panel["title"], target["refId"])] = (expr, bool(target.get("instant")))
    return out


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def model(api: FakeApi, job_id: str, step: int) -> str:
    [checkpoint] = [c for c in api.jobs[job_id].checkpoints if c["step_number"] == step]
    return str(checkpoint["fine_tuned_model_checkpoint"])


def supervised_rows(api: FakeApi) -> dict[tuple[str, str, str], Series]:
    sft, dpo = "Supervised fine-tuning", "DPO fine-tuning"
    return {
        (sft, "Best checkpoint", "A"): {
            labels(job_id=SFT, metric="full_valid_loss", model=model(api, SFT, 200)): 200.0
        },
        (sft, "Overfitting ratio at the latest checkpoint", "A"): {labels(job_id=SFT): 0.8 / 0.2},
        (sft, "Hyperparameters", "A"): {
            labels(job_id=SFT, name="n_epochs"): 3.0,
            labels(job_id=SFT, name="batch_size"): 1.0,
            labels(job_id=SFT, name="learning_rate_multiplier"): 1.0,
        },
        (dpo, "Best checkpoint", "A"): {
            labels(job_id=DPO, metric="valid_loss", model=model(api, DPO, 2)): 2.0
        },
        (dpo, "Overfitting ratio at the latest checkpoint", "A"): {labels(job_id=DPO): 0.625 / 0.5},
        (dpo, "Hyperparameters", "A"): {
            labels(job_id=DPO, name="beta"): 0.5,
            labels(job_id=DPO, name="n_epochs"): 2.0,
        },
    }


def reinforcement_row(api: FakeApi) -> dict[tuple[str, str, str], Series]:
    row = "Reinforcement fine-tuning"
    xy = "Rewards by checkpoint step: $reinforcement_job"
    rft, flat = labels(job_id=RFT), labels(job_id=FLAT)
    rate = {("exact", "train", "other_error"): 0.125, ("exact", "train", "sample_parse_error"): 0.0}
    return {
        (row, xy, "train_mean_reward"): {
            labels(job_id=RFT, step=str(s)): v[0] for s, v in RFT_CHECKPOINTS.items()
        },
        (row, xy, "valid_mean_reward"): {},
        (row, xy, "full_valid_mean_reward"): {
            labels(job_id=RFT, step=str(s)): v[1] for s, v in RFT_CHECKPOINTS.items()
        },
        (row, "Live rewards", "A"): {rft: 0.75, flat: 0.0},
        (row, "Live rewards", "B"): {rft: 0.4375},
        (row, "Live rewards", "C"): {rft: 0.5},
        (row, "Reward by grader", "A"): {
            labels(job_id=RFT, grader="exact", split="train"): 0.75,
            labels(job_id=RFT, grader="exact", split="valid"): 0.5,
            labels(job_id=RFT, grader="judge", split="train"): 0.5,
        },
        (row, "Train - valid reward gap", "A"): {rft: 0.75 - 0.5},
        (row, "Grader error rates", "A"): {
            labels(job_id=RFT, grader=g, split=s, error=e): value for (g, s, e), value in rate.items()
        },
        (row, "Completion and reasoning tokens", "A"): {rft: 300.0},
        (row, "Completion and reasoning tokens", "B"): {rft: 800.0},
        (row, "Step phase times", "A"): {
            labels(job_id=RFT, phase=phase): seconds for phase, seconds in RFT_EVENT["timing"]["step"].items()
        },
        (row, "Best checkpoint", "A"): {
            labels(job_id=RFT, metric="full_valid_mean_reward", model=model(api, RFT, 4)): 4.0
        },
        (row, "Hyperparameters", "A"): {
            labels(job_id=RFT, name="n_epochs"): 1.0,
            labels(job_id=RFT, name="eval_interval"): 2.0,
            labels(job_id=RFT, name="compute_multiplier"): 2.0,
        },
    }


def tables(api: FakeApi) -> dict[tuple[str, str, str], Series]:
    best = {SFT: 200, DPO: 2, RFT: 4}
    marked = {}
    for job_id, step in best.items():
        [c] = [c for c in api.jobs[job_id].checkpoints if c["step_number"] == step]
        marked[
            labels(
                job_id=job_id, step=str(step), checkpoint_id=c["id"], model=c["fine_tuned_model_checkpoint"]
            )
        ] = 1.0
    methods = {SFT: "supervised", DPO: "dpo", RFT: "reinforcement", FLAT: "reinforcement"}
    info = {
        labels(job_id=j, method=m, model=api.jobs[j].model, account="default"): 1.0
        for j, m in methods.items()
    }
    return {
        ("Checkpoints", "Checkpoints", "best"): marked,
        ("Live training (job events)", "Jobs", "info"): info,
    }


def pending(prom: Prometheus) -> set[tuple[str, str]]:
    return {
        (a["labels"]["alertname"], a["labels"].get("job_id", ""))
        for a in prom.get("/api/v1/alerts")["alerts"]
    }


def test_method_rows_and_alerts_against_real_prometheus(stack: tuple[FakeApi, Prometheus]) -> None:
    api, prom = stack
    targets = row_targets()
    want = supervised_rows(api) | reinforcement_row(api) | tables(api)
    method_rows = {"Supervised fine-tuning", "DPO fine-tuning", "Reinforcement fine-tuning"}
    assert {key for key in targets if key[0] in method_rows} == {key for key in want if key[0] in method_rows}

    def got() -> dict[tuple[str, str, str], Series]:
        return {key: prom.series(targets[key][0]) for key in want}

    assert wait_for(lambda: got() == want, 60, 0.5), {k: v for k, v in got().items() if v != want[k]}
    for key in want:
        expr, instant = targets[key]
        if not instant:
            assert prom.query_range(expr, str(key))["data"]["result"], key

    # The method alerts, on real data, pending for exactly their jobs (the `for:` keeps them so).
    expected_alerts = {
        ("CkptExporterOverfitting", SFT),
        ("CkptExporterValidLossRising", SFT),
        ("CkptExporterRewardGap", RFT),
        ("CkptExporterGraderErrors", RFT),
        ("CkptExporterRewardFlat", FLAT),
        ("CkptExporterNoNewCheckpoint", FLAT),  # running without a checkpoint (its `for` is 2h)
    }
    assert wait_for(lambda: pending(prom) == expected_alerts, 30, 0.5), pending(prom)
