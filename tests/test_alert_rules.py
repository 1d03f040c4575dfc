"""The alert rules (helm/ckpt-exporter/files/alerts.yaml), their promtool unit tests (tests/rules/),
and the Prometheus configuration of the compose example (deploy/compose/prometheus.yml).

promtool comes with Debian's `prometheus` package. Without it these tests are skipped, except in CI
(CI=true), where a missing promtool is a failure.
"""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.helpers import require_tool

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "helm" / "ckpt-exporter" / "files" / "alerts.yaml"
RULE_TESTS_DIR = REPO / "tests" / "rules"
COMPOSE_DIR = REPO / "deploy" / "compose"
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus.yml"
RUNBOOK = "https://github.com/ckpt-exporter/ckpt-exporter/blob/main/docs/operations.md#"

EXPECTED_ALERTS = {
    "CkptExporterDown": "critical",
    "CkptExporterJobDown": "warning",
    "CkptExporterApiErrors": "warning",
    "CkptExporterNoNewCheckpoint": "warning",
    "CkptExporterValidLossRising": "warning",
    "CkptExporterTrainingLossDiverging": "warning",
}


def run(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.yaml"))


# --- promtool -----------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run([require_tool("promtool"), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    files = rule_test_files()
    assert files, "no promtool rule tests in tests/rules"
    result = run([require_tool("promtool"), "test", "rules", *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


def test_promtool_check_compose_prometheus_config(tmp_path: Path) -> None:
    # Run from elsewhere: rule_files must resolve relative to the config file, not to the cwd.
    result = run([require_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


# --- rule file conventions ----------------------------------------------------------------------


def test_every_expected_alert_is_defined() -> None:
    assert {rule["alert"] for rule in alert_rules()} == set(EXPECTED_ALERTS)


@pytest.mark.parametrize(
    "rule",
    alert_rules(),
    ids=lambda r: f"{r['alert']}-{r['labels'].get('reason', r['labels'].get('loss', ''))}",
)
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] == EXPECTED_ALERTS[rule["alert"]]
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == RUNBOOK + rule["alert"].lower()
    assert rule.get("for"), f"{rule['alert']} has no `for`"


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    """Each alert name appears in tests/rules with at least one firing and one silent case."""
    firing: set[str] = set()
    silent: set[str] = set()
    for path in rule_test_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert doc["rule_files"] == ["../../helm/ckpt-exporter/files/alerts.yaml"], path
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
                for alert in case.get("exp_alerts") or []:
                    assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
                    assert "severity" in alert["exp_labels"]
    assert firing == set(EXPECTED_ALERTS)
    assert silent == set(EXPECTED_ALERTS)


# --- compose example ----------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    return data


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    mounts: dict[str, Path] = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = (COMPOSE_DIR / source).resolve()
    return mounts


def test_compose_prometheus_rule_files_resolve_in_the_container() -> None:
    """rule_files, resolved against the config's path in the container, is the mounted alerts file."""
    prometheus = _compose()["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    [config_flag] = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_in_container = PurePosixPath(config_flag.split("=", 1)[1])
    mounts = _mounts(prometheus)
    assert mounts[str(config_in_container)] == PROMETHEUS_CONFIG.resolve()

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    [rule_file] = config["rule_files"]
    # Lexical resolution, as Prometheus does (filepath.Join cleans "..").
    parts: list[str] = []
    for part in (config_in_container.parent / rule_file).parts:
        if part == "..":
            parts.pop()
        else:
            parts.append(part)
    in_container = str(PurePosixPath(*parts))
    assert mounts[in_container] == ALERTS.resolve()
    # And in the repository.
    assert (PROMETHEUS_CONFIG.parent / rule_file).resolve() == ALERTS.resolve()


def test_compose_prometheus_scrapes_the_exporter_as_job_ckpt_exporter() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ckpt-exporter"]["static_configs"] == [{"targets": ["ckpt-exporter:9842"]}]


def test_compose_exporter_runs_the_demo_from_the_repository_dockerfile() -> None:
    exporter = _compose()["services"]["ckpt-exporter"]
    assert exporter["command"] == ["demo", "--listen-address", "0.0.0.0"]
    assert exporter["ports"] == ["9842:9842"]
    context = (COMPOSE_DIR / exporter["build"]["context"]).resolve()
    assert context == REPO
    assert exporter["build"]["dockerfile"] == "Dockerfile"
