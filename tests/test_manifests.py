"""deploy/kubernetes/: the plain manifests for teams without Helm stay what the chart renders.

scripts/render-manifests.sh renders them with helm template from deploy/kubernetes/values.yaml;
these tests render again into a temporary directory and compare, file by file. helm is found as
$HELM, .tools/bin/helm or on PATH; without it the tests skip, except under CI=true, where they fail.
scripts/helm-check.sh validates the committed files with kubernetes-validate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, require_tool

MANIFESTS = REPO / "deploy" / "kubernetes"
SCRIPT = REPO / "scripts" / "render-manifests.sh"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def helm() -> str:
    return require_tool(os.environ.get("HELM") or "helm", REPO / ".tools" / "bin" / "helm")


def run_script(helm: str, *args: str, repo: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM": helm}
    return subprocess.run(
        ["bash", str(repo / "scripts" / "render-manifests.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def committed() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(MANIFESTS.glob("*.yaml")) if p.name != "values.yaml"}


def test_committed_manifests_are_what_the_chart_renders(helm: str, tmp_path: Path) -> None:
    result = run_script(helm, str(tmp_path))
    assert result.returncode == 0, result.stderr
    rendered = {p.name: p.read_text() for p in sorted(tmp_path.glob("*.yaml"))}
    assert sorted(rendered) == sorted(committed()), "run scripts/render-manifests.sh"
    for name, text in rendered.items():
        assert committed()[name] == text, f"deploy/kubernetes/{name} drifted: run scripts/render-manifests.sh"


def test_kustomization_lists_every_manifest_once() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "ckpt-exporter"
    assert kustomization["resources"] == sorted(set(committed()) - {"kustomization.yaml"})


def docs() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for name, text in committed().items():
        if name != "kustomization.yaml":
            found += [d for d in yaml.safe_load_all(text) if d]
    return found


def test_manifests_run_the_published_image_with_the_key_secret_and_discovery() -> None:
    by_kind = {d["kind"]: d for d in docs()}
    assert sorted(by_kind) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    assert {d["metadata"]["namespace"] for d in docs()} == {"ckpt-exporter"}
    assert {d["metadata"]["name"] for d in docs()} == {"ckpt-exporter"}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert ctr["image"] == f"ghcr.io/ckpt-exporter/ckpt-exporter:{VERSION}"
    key_volume = next(v for v in pod["volumes"] if v["name"] == "ckpt-exporter-api-key")
    assert key_volume["secret"]["secretName"] == "openai-api-key"
    config = yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"])
    assert (config["discover"], config["api_key_file"]) == (True, "/var/run/secrets/ckpt-exporter/api-key")
    # Labels that only Helm makes true are left out of plain manifests.
    for doc in docs():
        labels = doc["metadata"]["labels"]
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/managed-by" not in labels


def test_check_mode_names_a_drifted_file(helm: str, tmp_path: Path) -> None:
    """--check fails on a hand edit: a copy of the repository's chart, script and manifests."""
    repo = tmp_path / "repo"
    for part in ("helm", "scripts", "deploy/kubernetes"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    assert run_script(helm, "--check", repo=repo).returncode == 0
    service = repo / "deploy" / "kubernetes" / "service.yaml"
    service.write_text(service.read_text().replace("port: 9842", "port: 9843"))
    drifted = run_script(helm, "--check", repo=repo)
    assert drifted.returncode == 1
    assert drifted.stderr.strip() == (
        "render-manifests: deploy/kubernetes differs from the chart: service.yaml;"
        " run scripts/render-manifests.sh"
    )
