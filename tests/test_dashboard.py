"""Structure of the Grafana dashboard (helm/ckpt-exporter/files/dashboard.json).

Grafana itself cannot run in the test environment: what a panel shows is proven by
tests/test_prometheus_e2e.py, which runs every expression of the dashboard against a real Prometheus.
This module checks the JSON structure, and (when promtool is installed) that every expression parses.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import (
    DASHBOARD,
    REPO,
    all_panels,
    load_dashboard,
    query_panels,
    require_tool,
    substitute_grafana_variables,
)

COMPOSE_DIR = REPO / "deploy" / "compose"

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
JOB_ID_QUERY = "label_values(ckpt_exporter_job_up, job_id)"

# Every metric that has a job_id label must be filtered by the job_id variable.
JOB_SCOPED_METRIC = re.compile(
    r"\b(openai_fine_tuning_\w+|ckpt_exporter_job_up|ckpt_exporter_job_last_success_timestamp_seconds"
    r"|ckpt_exporter_checkpoints_discovered_total|ckpt_exporter_api_errors_total)\b(\{[^}]*\})?"
)


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every non-empty target expression."""
    return [
        (p["title"], t["refId"], t["expr"])
        for p in query_panels(dashboard)
        for t in p.get("targets", [])
        if t.get("expr", "").strip()
    ]


# --- identity and variables ---------------------------------------------------------------------


def test_identity() -> None:
    d = load_dashboard()
    assert d["uid"] == "ckpt-exporter"
    assert d["title"] == "OpenAI fine-tuning checkpoints"
    assert d["schemaVersion"] == 39
    assert d["id"] is None
    assert d["editable"] is True
    assert "__inputs" not in d, "the dashboard uses the datasource variable, not import-time inputs"


def test_datasource_variable() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "job_id"]
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    assert ds["multi"] is False
    assert ds["includeAll"] is False


def test_job_id_variable() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    job = variables["job_id"]
    assert job["type"] == "query"
    assert job["datasource"] == DATASOURCE_REF
    assert job["query"] == JOB_ID_QUERY
    assert job["definition"] == JOB_ID_QUERY
    assert job["multi"] is True
    assert job["includeAll"] is True
    assert job["refresh"] == 2  # on time range change: jobs come and go


# --- panels and targets -------------------------------------------------------------------------


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    panels = query_panels(load_dashboard())
    assert panels
    for panel in panels:
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no targets"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, (panel["title"], target["refId"])


def test_every_panel_has_a_query() -> None:
    for panel in query_panels(load_dashboard()):
        exprs = [t.get("expr", "") for t in panel["targets"]]
        assert any(e.strip() for e in exprs), f"panel {panel['title']!r} has no non-empty expr"
        refids = [t["refId"] for t in panel["targets"]]
        assert len(refids) == len(set(refids)), f"duplicate refId in {panel['title']!r}"


def test_panel_ids_unique_and_layout_fits() -> None:
    panels = all_panels(load_dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["h"] > 0
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p.get("description"), f"panel {p['title']!r} has no description"


def test_rows() -> None:
    rows = [p["title"] for p in load_dashboard()["panels"] if p["type"] == "row"]
    assert rows == ["Checkpoints", "Live training (job events)", "Exporter health"]


def test_job_scoped_selectors_use_the_job_id_variable() -> None:
    for title, ref, expr in dashboard_exprs(load_dashboard()):
        for m in JOB_SCOPED_METRIC.finditer(expr):
            assert m.group(2) is not None and 'job_id=~"$job_id"' in m.group(2), (
                f'{title!r} {ref}: {m.group(1)} is not filtered by job_id=~"$job_id"'
            )


def test_no_query_hardcodes_a_job() -> None:
    for title, ref, expr in dashboard_exprs(load_dashboard()):
        assert "ftjob-" not in expr, (title, ref)
        assert 'job="' not in expr, f"{title!r} {ref}: the scrape job name must not be hard-coded"


def test_checkpoint_charts_have_step_on_the_x_axis() -> None:
    panels = {p["title"]: p for p in query_panels(load_dashboard())}
    expected = {
        "Loss by checkpoint step: $job_id": ["train_loss", "valid_loss", "full_valid_loss"],
        "Token accuracy by checkpoint step: $job_id": [
            "train_mean_token_accuracy",
            "valid_mean_token_accuracy",
            "full_valid_mean_token_accuracy",
        ],
    }
    for title, metrics in expected.items():
        p = panels[title]
        assert p["type"] == "xychart"
        assert p["repeat"] == "job_id"
        assert p["options"]["dims"]["x"] == "step"
        assert [t["refId"] for t in p["targets"]] == metrics
        for t, metric in zip(p["targets"], metrics, strict=True):
            assert t["instant"] is True and t["range"] is False
            assert t["format"] == "table"
            assert (
                t["expr"]
                == f'max by (job_id, step) (openai_fine_tuning_checkpoint_{metric}{{job_id=~"$job_id"}})'
            )
        ids = [tr["id"] for tr in p["transformations"]]
        assert ids == ["merge", "convertFieldType", "sortBy", "organize"]
        conv = p["transformations"][1]["options"]["conversions"]
        assert conv == [{"targetField": "step", "destinationType": "number"}]
        assert p["transformations"][3]["options"]["renameByName"] == {f"Value #{m}": m for m in metrics}


def test_checkpoint_table_frames_share_one_label_set() -> None:
    """merge needs identical label columns in every frame: each query is joined to the info metric."""
    panels = {p["title"]: p for p in query_panels(load_dashboard())}
    table = panels["Checkpoints"]
    assert table["type"] == "table"
    suffix = (
        "\n  * on (job_id, step) group_left (checkpoint_id, model)\n"
        "group by (job_id, step, checkpoint_id, model) "
        '(openai_fine_tuning_checkpoint_info{job_id=~"$job_id"})'
    )
    for t in table["targets"]:
        assert t["format"] == "table" and t["instant"] is True
        assert t["expr"].startswith("max by (job_id, step) (openai_fine_tuning_checkpoint_")
        assert t["expr"].endswith(suffix)
    assert [tr["id"] for tr in table["transformations"]] == ["merge", "convertFieldType", "organize"]


def test_expected_panels_present() -> None:
    titles = [p["title"] for p in query_panels(load_dashboard())]
    assert titles == [
        "Loss by checkpoint step: $job_id",
        "Token accuracy by checkpoint step: $job_id",
        "Checkpoints",
        "Latest checkpoint step",
        "Loss at the latest checkpoint",
        "Token accuracy at the latest checkpoint",
        "New checkpoints discovered",
        "Checkpoints discovered in the time range",
        "Jobs",
        "Estimated time to finish",
        "Training progress",
        "Training step",
        "Trained tokens",
        "Live loss",
        "Live token accuracy",
        "Job polls",
        "Time since the last successful poll",
        "OpenAI API requests by endpoint and code",
        "API errors by job and reason",
        "Poll cycle duration",
        "Exporter version",
    ]


# --- expressions parse (promtool) ---------------------------------------------------------------


def test_every_expression_parses(tmp_path: Path) -> None:
    """Each expression, with Grafana's variables substituted, as a recording rule: promtool parses it."""
    promtool = require_tool("promtool")
    exprs = dashboard_exprs(load_dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:expr_{i}",
                        "expr": substitute_grafana_variables(e, "ftjob-a|ftjob-b"),
                    }
                    for i, (_, _, e) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


# --- Grafana provisioning of the compose example ------------------------------------------------


def test_compose_grafana_provisioning() -> None:
    ds = yaml.safe_load(
        (COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    assert ds["apiVersion"] == 1
    [source] = ds["datasources"]
    assert source["uid"] == "prometheus"
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True

    prov = yaml.safe_load(
        (COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "ckpt-exporter.yaml").read_text()
    )
    [provider] = prov["providers"]
    dashboards_dir = provider["options"]["path"]

    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source_path, target_path, *_ = volume.split(":")
        mounts[target_path] = (COMPOSE_DIR / source_path).resolve()
    # The provisioning directory and the dashboard file are mounted where the provider looks.
    assert mounts["/etc/grafana/provisioning"] == (COMPOSE_DIR / "grafana" / "provisioning").resolve()
    dashboard_mounts = [t for t in mounts if t.startswith(dashboards_dir.rstrip("/") + "/")]
    assert dashboard_mounts, f"no file mounted under {dashboards_dir}"
    assert [mounts[t] for t in dashboard_mounts] == [DASHBOARD.resolve()]
