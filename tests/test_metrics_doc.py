"""docs/metrics.md and the code agree: every served metric is documented with its type and labels."""

from __future__ import annotations

import dataclasses
import re

from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.families import FAMILIES
from ckpt_exporter.models import Checkpoint, FineTuningJob, MetricsEventData
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.server import MetricsApp
from ckpt_exporter.snapshot import JobSnapshot
from tests.helpers import REPO

STANDARD_PREFIXES = ("process_", "python_")


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    rows = {}
    for line in (REPO / "docs" / "metrics.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"[a-z_:][a-z0-9_:]*", cells[0]) and cells[0] != "name":
            labels = frozenset(label.strip() for label in cells[2].split(",") if label.strip())
            rows[cells[0]] = (cells[1], labels)
    return rows


def served() -> dict[str, tuple[str, frozenset[str]]]:
    """Every family the exporter serves, from a state where every metric has samples."""
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
            },
        }
    )
    jobs = ExpositionCache()
    job = TypeAdapter(FineTuningJob).validate_python(
        {"id": "j", "status": "running", "created_at": 1, "trained_tokens": 5, "estimated_finish": 9}
    )
    live = TypeAdapter(MetricsEventData).validate_python(
        {**dataclasses.asdict(checkpoint.metrics), "step": 1, "total_steps": 2}
    )
    jobs.update(
        JobSnapshot(
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
        )
    )
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
    table = {f.exposed_name: (f.exposed_type, frozenset(f.exposed_labels)) for f in FAMILIES}
    assert {name: rows.get(name) for name in table} == table
