"""The dashboard and the alert rules against a real Prometheus scraping the real exporter.

    fake OpenAI API (loopback)  <-  python -m ckpt_exporter  <-  prometheus (scrape 1s, rules 1s)

Grafana cannot run here, so the dashboard is proven query by query: every expression of every
panel (Grafana's variables substituted as Grafana would) and of every alert rule runs through
Prometheus' HTTP API and must succeed; the checkpoint panels must return exactly the series the
fake API holds; every rule must evaluate without error, and exactly the expected alerts go pending.

Needs the `prometheus` binary (Debian package `prometheus`): skipped without it, failed in CI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ckpt_exporter import __version__
from ckpt_exporter.fake import FakeApi
from ckpt_exporter.models import METRIC_FIELDS
from tests.helpers import (
    ExporterProcess,
    load_dashboard,
    parse_samples,
    query_panels,
    substitute_grafana_variables,
    wait_for,
)
from tests.promstack import (
    ALERTS,
    Labels,
    Prometheus,
    Series,
    scraped_exporter,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-test"

CHECKPOINT_FIELDS = METRIC_FIELDS

# Jobs selected in the dashboard's job_id variable; ftjob-e2e-other is polled too but not selected.
SELECTED = ("ftjob-e2e-a", "ftjob-e2e-b", "ftjob-e2e-c", "ftjob-e2e-empty", "ftjob-e2e-missing")
OTHER = "ftjob-e2e-other"
# What Grafana sends for a multi-value variable: a regex alternation of the selected values.
JOB_REGEX = "(" + "|".join(SELECTED) + ")"


def full(step: int, base: float) -> dict[str, Any]:
    """All six metrics, distinct per field and step."""
    return {name: round(base + i / 100 + step / 100_000, 6) for i, name in enumerate(CHECKPOINT_FIELDS)}


LIVE_10 = {"train_loss": 1.5, "valid_loss": 1.6, "full_valid_loss": 1.55, "train_mean_token_accuracy": 0.6}
LIVE_20 = {
    "train_loss": 1.4,
    "valid_loss": 1.45,
    "train_mean_token_accuracy": 0.62,
    "valid_mean_token_accuracy": 0.61,
}


def populate(api: FakeApi) -> None:
    # a: every metric; full_valid_loss 0.9, 0.7, 0.8: the latest checkpoint is worse than step 200.
    api.add_job("ftjob-e2e-a", newest_first=True)
    for step, fvl in ((100, 0.9), (200, 0.7), (300, 0.8)):
        api.add_checkpoint("ftjob-e2e-a", step, {**full(step, 0.3), "full_valid_loss": fvl})
    # b: no full_valid metrics at all; valid_loss rises 0.5 -> 0.75; a null accuracy at step 14.
    api.add_job("ftjob-e2e-b", newest_first=False)
    api.add_checkpoint(
        "ftjob-e2e-b",
        7,
        {
            "train_loss": 1.25,
            "train_mean_token_accuracy": 0.5,
            "valid_loss": 0.5,
            "valid_mean_token_accuracy": 0.4,
        },
    )
    api.add_checkpoint(
        "ftjob-e2e-b",
        14,
        {
            "train_loss": 1.0,
            "train_mean_token_accuracy": 0.6,
            "valid_loss": 0.75,
            "valid_mean_token_accuracy": None,
        },
    )
    # a is training: two metrics events (the second without full_valid_loss) and an ETA.
    api.update_job("ftjob-e2e-a", estimated_finish=int(time.time()) + 3600)
    api.add_event("ftjob-e2e-a", "Step 10/400", data={**LIVE_10, "step": 10, "total_steps": 400})
    api.add_event("ftjob-e2e-a", "Step 20/400", data={**LIVE_20, "step": 20, "total_steps": 400})
    # c: a single checkpoint, valid metrics null; the job has succeeded.
    api.add_job("ftjob-e2e-c", status="succeeded", trained_tokens=123_456)
    api.add_checkpoint(
        "ftjob-e2e-c", 5, {**full(5, 0.2), "valid_loss": None, "valid_mean_token_accuracy": None}
    )
    # empty: a job without checkpoints yet.
    api.add_job("ftjob-e2e-empty")
    # ftjob-e2e-missing is watched but unknown to the API (HTTP 404).
    # other: polled, but not selected in the dashboard.
    api.add_job(OTHER)
    for step in (1, 2):
        api.add_checkpoint(OTHER, step, full(step, 0.9 - step / 10))


# --- expected series, from the fake API's own data -------------------------------------------------


def _labels(**kv: str) -> Labels:
    return frozenset(kv.items())


def selected_checkpoints(api: FakeApi) -> Iterator[tuple[str, dict[str, Any]]]:
    for job in api.jobs.values():
        if job.id in SELECTED:
            for checkpoint in job.checkpoints:
                yield job.id, checkpoint


def expected_per_step(api: FakeApi, field: str) -> Series:
    return {
        _labels(job_id=job_id, step=str(c["step_number"])): float(c["metrics"][field])
        for job_id, c in selected_checkpoints(api)
        if c["metrics"].get(field) is not None
    }


def expected_table(api: FakeApi, field: str) -> Series:
    out: Series = {}
    for job_id, c in selected_checkpoints(api):
        value = c["created_at"] * 1000 if field == "created" else c["metrics"].get(field)
        if value is not None:
            labels = _labels(
                job_id=job_id,
                step=str(c["step_number"]),
                checkpoint_id=c["id"],
                model=c["fine_tuned_model_checkpoint"],
            )
            out[labels] = float(value)
    return out


def expected_latest_step(api: FakeApi) -> Series:
    return {
        _labels(job_id=job.id): float(max(c["step_number"] for c in job.checkpoints))
        for job in api.jobs.values()
        if job.id in SELECTED and job.checkpoints
    }


def expected_at_latest(api: FakeApi, field: str) -> Series:
    out: Series = {}
    for job in api.jobs.values():
        if job.id in SELECTED and job.checkpoints:
            latest = max(job.checkpoints, key=lambda c: c["step_number"])
            if latest["metrics"].get(field) is not None:
                out[_labels(job_id=job.id)] = float(latest["metrics"][field])
    return out


# --- processes -------------------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[FakeApi, ExporterProcess, Prometheus]]:
    api = FakeApi(api_key=API_KEY)
    populate(api)
    with scraped_exporter(api, (*SELECTED, OTHER), tmp_path) as (exporter, prom):
        yield api, exporter, prom


# --- the dashboard's and the rules' expressions ----------------------------------------------------


def dashboard_targets() -> list[tuple[str, str, str, bool]]:
    """(panel title, refId, expr with Grafana's variables substituted, instant?) of every target."""
    out = []
    for panel in query_panels(load_dashboard()):
        for target in panel["targets"]:
            expr = substitute_grafana_variables(target["expr"], JOB_REGEX, rate_interval="1m", range_="5m")
            out.append((panel["title"], target["refId"], expr, bool(target.get("instant"))))
    return out


def panel_query(title: str, ref: str) -> str:
    [expr] = [e for t, r, e, _ in dashboard_targets() if (t, r) == (title, ref)]
    return expr


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [(rule["alert"], rule["expr"]) for group in doc["groups"] for rule in group["rules"]]


def assert_checkpoint_panels_exact(prom: Prometheus, api: FakeApi) -> None:
    xy = {
        "Loss by checkpoint step: $job_id": ("train_loss", "valid_loss", "full_valid_loss"),
        "Token accuracy by checkpoint step: $job_id": (
            "train_mean_token_accuracy",
            "valid_mean_token_accuracy",
            "full_valid_mean_token_accuracy",
        ),
    }
    for title, fields in xy.items():
        for field in fields:
            assert prom.series(panel_query(title, field)) == expected_per_step(api, field), (title, field)

    for field in ("created", *CHECKPOINT_FIELDS):
        assert prom.series(panel_query("Checkpoints", field)) == expected_table(api, field), field

    assert prom.series(panel_query("Latest checkpoint step", "A")) == expected_latest_step(api)

    latest = {
        "Loss at the latest checkpoint": ("train_loss", "valid_loss", "full_valid_loss"),
        "Token accuracy at the latest checkpoint": (
            "train_mean_token_accuracy",
            "valid_mean_token_accuracy",
            "full_valid_mean_token_accuracy",
        ),
    }
    for title, fields in latest.items():
        for ref, field in zip("ABC", fields, strict=True):
            assert prom.series(panel_query(title, ref)) == expected_at_latest(api, field), (title, field)


def active_alerts(prom: Prometheus) -> set[tuple[str, ...]]:
    """(alertname, job_id or endpoint, loss, state) of the active alerts.

    CkptExporterApiErrors of other endpoints than checkpoints are left out: the unknown job also
    fails on the job/events endpoints once the exporter polls them.
    """
    return {
        (
            a["labels"]["alertname"],
            a["labels"].get("job_id", a["labels"].get("endpoint", "")),
            a["labels"].get("loss", ""),
            a["state"],
        )
        for a in prom.get("/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] != "CkptExporterApiErrors" or a["labels"]["endpoint"] == "checkpoints"
    }


def test_dashboard_and_alert_queries_against_real_prometheus(
    stack: tuple[FakeApi, ExporterProcess, Prometheus],
) -> None:
    api, exporter, prom = stack

    # Scraped: every selected checkpoint is in Prometheus, with enough samples for 1m rates.
    n_checkpoints = sum(1 for _ in selected_checkpoints(api))
    assert wait_for(
        lambda: (
            prom.series(f'count(openai_fine_tuning_checkpoint_info{{job_id=~"{JOB_REGEX}"}})')
            == {frozenset(): float(n_checkpoints)}
            and prom.series('count_over_time(up{job="ckpt-exporter"}[1m])').get(
                _labels(instance=prom_target(prom), job="ckpt-exporter"), 0
            )
            >= 4
        ),
        60,
        0.5,
    ), "Prometheus did not scrape the exporter's checkpoints"

    # Every expression of the dashboard succeeds, as an instant query and (time series panels) as
    # a range query.
    targets = dashboard_targets()
    assert len(targets) == 64
    for title, ref, expr, instant in targets:
        prom.query(expr, f"{title} {ref}")
        if not instant:
            prom.query_range(expr, f"{title} {ref}")

    # Every alert expression succeeds, and Prometheus evaluates every rule without error.
    for alert, expr in rule_exprs():
        prom.query(expr, alert)
    assert wait_for(lambda: all(r.get("lastEvaluation", "").startswith("20") for r in all_rules(prom)), 20)
    rules = all_rules(prom)
    assert len(rules) == len(rule_exprs()) == 12
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule

    # The checkpoint panels return exactly what the fake API holds.
    assert_checkpoint_panels_exact(prom, api)

    # The live panels, from job a's newest metrics event (step 20 of 400), and the job panels.
    a = _labels(job_id="ftjob-e2e-a")
    live_expected = {
        ("Live loss", "A"): {a: LIVE_20["train_loss"]},
        ("Live loss", "B"): {a: LIVE_20["valid_loss"]},
        ("Live loss", "C"): {},  # the newest event has no full_valid_loss
        ("Live token accuracy", "A"): {a: LIVE_20["train_mean_token_accuracy"]},
        ("Live token accuracy", "B"): {a: LIVE_20["valid_mean_token_accuracy"]},
        ("Training step", "A"): {a: 20.0},
        ("Training step", "B"): {a: 400.0},
        ("Training progress", "A"): {a: 0.05},
        ("Trained tokens", "A"): {_labels(job_id="ftjob-e2e-c"): 123_456.0},
        ("Jobs", "status"): {
            _labels(job_id="ftjob-e2e-a", status="running"): 1.0,
            _labels(job_id="ftjob-e2e-b", status="running"): 1.0,
            _labels(job_id="ftjob-e2e-c", status="succeeded"): 1.0,
            _labels(job_id="ftjob-e2e-empty", status="running"): 1.0,
        },
    }

    def live_panels() -> dict[tuple[str, str], Series]:
        return {key: prom.series(panel_query(*key)) for key in live_expected}

    assert wait_for(lambda: live_panels() == live_expected, 20), live_panels()
    eta = prom.series(panel_query("Estimated time to finish", "A"))
    assert list(eta) == [a] and 3000 < eta[a] <= 3600

    # Health panels have data for the selected jobs.
    job_up = prom.series(panel_query("Job polls", "A"))
    assert job_up == {
        **{_labels(job_id=j): 1.0 for j in SELECTED if j != "ftjob-e2e-missing"},
        _labels(job_id="ftjob-e2e-missing"): 0.0,
    }
    ages = prom.series(panel_query("Time since the last successful poll", "A"))
    assert set(ages) == {_labels(job_id=j) for j in SELECTED if j != "ftjob-e2e-missing"}
    # A finished job is read once, at start: its age is at most the exporter's own age (no fixed bound,
    # which a loaded machine outlasts).
    started = parse_samples(exporter.metrics())[("process_start_time_seconds", frozenset())]
    assert all(0 <= age <= time.time() - started + 1 for age in ages.values()), ages
    assert set(prom.series(panel_query("OpenAI API requests by endpoint and code", "A"))) >= {
        _labels(endpoint="checkpoints", code="200"),
        _labels(endpoint="checkpoints", code="404"),
    }
    errors = prom.series(panel_query("API errors by job and reason", "A"))
    assert {dict(labels)["job_id"] for labels in errors} == {"ftjob-e2e-missing"}
    p50 = prom.series(panel_query("Poll cycle duration", "A"))
    assert list(p50) == [frozenset()] and p50[frozenset()] > 0
    assert prom.series(panel_query("Exporter version", "A")) == {_labels(version=__version__): 1.0}

    # The rules on real data: the two jobs whose latest validation loss rose and the unknown job go
    # pending; nothing else. (The unknown job's 404s back off exponentially, so they stay far below
    # CkptExporterApiErrors' 10% share; promtool's unit tests cover that rule firing.)
    alert_a = ("CkptExporterValidLossRising", "ftjob-e2e-a", "full_valid_loss", "pending")
    expected_alerts = {
        alert_a,
        ("CkptExporterValidLossRising", "ftjob-e2e-b", "valid_loss", "pending"),
        ("CkptExporterJobDown", "ftjob-e2e-missing", "", "pending"),
    }
    if prom.series("openai_fine_tuning_job_status"):
        # Once the exporter reports job status: the running job without checkpoints.
        expected_alerts.add(("CkptExporterNoNewCheckpoint", "ftjob-e2e-empty", "", "pending"))
    assert wait_for(lambda: active_alerts(prom) == expected_alerts, 30, 0.5), active_alerts(prom)

    # A new, better checkpoint: the latest-checkpoint panels follow it, the table grows, the
    # discovery counter increases, and job a's validation-loss alert goes away.
    api.add_checkpoint("ftjob-e2e-a", 400, {**full(400, 0.25), "full_valid_loss": 0.6})
    assert wait_for(
        lambda: (
            prom.series(panel_query("Latest checkpoint step", "A")).get(_labels(job_id="ftjob-e2e-a"))
            == 400.0
        ),
        30,
        0.5,
    )
    assert_checkpoint_panels_exact(prom, api)
    discovered = prom.series(
        'max by (job_id) (ckpt_exporter_checkpoints_discovered_total{job_id="ftjob-e2e-a"})'
    )
    assert discovered == {_labels(job_id="ftjob-e2e-a"): 1.0}
    assert wait_for(
        lambda: (
            prom.series(panel_query("Checkpoints discovered in the time range", "A")).get(
                _labels(job_id="ftjob-e2e-a"), 0
            )
            >= 1
        ),
        20,
        0.5,
    )
    assert wait_for(lambda: active_alerts(prom) == expected_alerts - {alert_a}, 30, 0.5), active_alerts(prom)


def all_rules(prom: Prometheus) -> list[dict[str, Any]]:
    return [rule for group in prom.get("/api/v1/rules")["groups"] for rule in group["rules"]]


def prom_target(prom: Prometheus) -> str:
    [target] = prom.get("/api/v1/targets")["activeTargets"]
    return str(target["labels"]["instance"])
