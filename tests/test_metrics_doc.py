"""docs/metrics.md and the code agree: every served metric is documented with its type and labels."""

from __future__ import annotations

import dataclasses
import re

from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.families import FAMILIES
from ckpt_exporter.metricfamily import Family, FieldFamilies
from ckpt_exporter.models import Checkpoint, FineTuningJob, MetricsEventData
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.server import MetricsApp
from ckpt_exporter.snapshot import JobSnapshot
from tests.helpers import REPO

STANDARD_PREFIXES = ("process_", "python_")
# The numeric fields beyond the supervised ones that docs/metrics.md lists as known.
CHECKPOINT_REWARDS = ("train_mean_reward", "valid_mean_reward", "full_valid_mean_reward")
LIVE_RFT = (
    *CHECKPOINT_REWARDS,
    "completion_tokens_mean",
    "reasoning_tokens_mean",
    "mean_unresponsive_rewards",
)


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    rows = {}
    for line in (REPO / "docs" / "metrics.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"[a-z_:][a-z0-9_:]*", cells[0]) and cells[0] != "name":
            labels = frozenset(label.strip() for label in cells[2].split(",") if label.strip())
            rows[cells[0]] = (cells[1], labels)
    return rows


def every_metric_snapshot() -> JobSnapshot:
    """A job in a state where every metric has samples."""
    checkpoint = TypeAdapter(Checkpoint).validate_python(
        {
            "id": "c1",
            "created_at": 1,
            "fine_tuning_job_id": "j",
            "step_number": 1,
            "fine_tuned_model_checkpoint": "m",
            "metrics": {
                "train_loss": 1.0,
                "train_mean_token_accuracy": 1.0,
                "valid_loss": 1.0,
                "valid_mean_token_accuracy": 1.0,
                "full_valid_loss": 1.0,
                "full_valid_mean_token_accuracy": 1.0,
                **dict.fromkeys(CHECKPOINT_REWARDS, 0.5),
            },
        }
    )
    job = TypeAdapter(FineTuningJob).validate_python(
        {
            "id": "j",
            "status": "running",
            "created_at": 1,
            "trained_tokens": 5,
            "estimated_finish": 9,
            "method": {
                "type": "reinforcement",
                "reinforcement": {
                    "hyperparameters": {"n_epochs": 2, "reasoning_effort": "low"},
                    "grader": {"type": "python"},
                },
            },
        }
    )
    live = TypeAdapter(MetricsEventData).validate_python(
        {
            **{k: v for k, v in dataclasses.asdict(checkpoint.metrics).items() if isinstance(v, float)},
            **dict.fromkeys(LIVE_RFT, 0.5),
            "step": 1,
            "total_steps": 2,
            "scores": {"graders": [{"name": "g", "train_reward_mean": 0.5}]},
            "errors": {"graders": [{"name": "g", "other_error_mean": 0.0}]},
            "timing": {"step": {"sampling": 1.0}},
        }
    )
    return JobSnapshot(
        "j",
        (checkpoint,),
        True,
        True,
        1.0,
        1,
        (("timeout", 1),),
        job=job,
        live=live,
        event_counts=(("info", 1),),
        fields=frozenset(CHECKPOINT_REWARDS + LIVE_RFT),
    )


def served() -> dict[str, tuple[str, frozenset[str]]]:
    """Every family the exporter serves, from a state where every metric has samples."""
    jobs = ExpositionCache()
    jobs.update(every_metric_snapshot())
    metrics = SelfMetrics()
    metrics.poll_duration.observe(1)
    body, _ = MetricsApp(jobs, metrics, lambda: True).metrics_response("", "")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name.startswith(STANDARD_PREFIXES):
            continue
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = (family.type, labels)
    return out


def test_docs_match_code() -> None:
    assert documented() == served()


def test_the_families_table_is_documented_with_each_family_s_type_and_labels() -> None:
    rows = documented()
    table = {
        f.exposed_name: (f.exposed_type, frozenset(f.exposed_labels))
        for f in FAMILIES
        if isinstance(f, Family)
    }
    assert {name: rows.get(name) for name in table} == table


def test_the_rule_for_every_other_numeric_field_is_documented() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    patterns = [f for f in FAMILIES if isinstance(f, FieldFamilies)]
    assert [f.exposed_name for f in patterns] == [
        "openai_fine_tuning_checkpoint_<field>",
        "openai_fine_tuning_job_<field>",
    ]
    for family in patterns:
        labels = ", ".join(family.labels)
        assert f"`{family.exposed_name}{{{labels}}}`" in text
