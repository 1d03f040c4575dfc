"""The release workflow (.github/workflows/release.yml) and what it publishes.

Offline checks: check-jsonschema's vendored GitHub-workflow schema and actionlint (with shellcheck)
accept the workflow and refuse a broken copy; the workflow publishes where the chart points;
scripts/release-version.sh holds a tag to the declared versions. The tools are the ones
scripts/workflow-check.sh installs into .tools/workflow-check-venv (or on PATH); without them the
tool tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import REPO, require_tool

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
TOOLS = REPO / ".tools" / "workflow-check-venv" / "bin"
CHART = REPO / "helm" / "ckpt-exporter"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
OWNER = "${{ needs.version.outputs.owner }}"


def workflow() -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    loaded["on"] = loaded.pop(True)  # YAML 1.1 reads the key `on` as true
    return loaded


def steps(job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return found


def step_using(job: str, action: str) -> dict[str, Any]:
    (found,) = [s for s in steps(job) if s.get("uses", "").split("@")[0] == action]
    return found


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


# --- the tools accept it, and refuse a broken copy ---------------------------------------------------


def test_check_jsonschema_accepts_the_workflow_and_refuses_a_bad_key(tmp_path: Path) -> None:
    tool = require_tool("check-jsonschema", TOOLS / "check-jsonschema")
    ok = run(tool, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "release.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-24.04", "runs-onn: ubuntu-24.04", 1))
    refused = run(tool, "--builtin-schema", "vendor.github-workflows", str(broken))
    assert refused.returncode == 1
    assert "runs-onn" in refused.stdout + refused.stderr


def test_actionlint_accepts_the_workflow_and_refuses_a_wrong_output(tmp_path: Path) -> None:
    tool = require_tool("actionlint", TOOLS / "actionlint")
    shellcheck = require_tool("shellcheck", TOOLS / "shellcheck")
    ok = run(tool, "-shellcheck", shellcheck, str(WORKFLOW))
    assert (ok.returncode, ok.stdout) == (0, "")
    broken = tmp_path / "release.yml"
    text = WORKFLOW.read_text()
    assert "steps.build.outputs.digest }}" in text
    broken.write_text(text.replace("steps.build.outputs.digest }}", "steps.build.outputs.sha }}"))
    refused = run(tool, "-shellcheck", shellcheck, str(broken))
    assert refused.returncode == 1
    assert 'property "sha" is not defined' in refused.stdout


# --- what it publishes, and where -------------------------------------------------------------------


def test_runs_on_version_tags_only() -> None:
    assert workflow()["on"] == {"push": {"tags": ["v*"]}}
    assert workflow()["permissions"] == {}  # every job asks for what it needs


def test_every_action_is_pinned_to_a_version_or_a_commit() -> None:
    for job, spec in workflow()["jobs"].items():
        for step in spec["steps"]:
            if "uses" in step:
                ref = step["uses"].split("@", 1)[1]
                assert re.fullmatch(r"v\d+(\.\d+){0,2}|[0-9a-f]{40}", ref), (job, step["uses"])


def test_image_is_multi_arch_with_sbom_and_provenance_on_ghcr() -> None:
    job = workflow()["jobs"]["image"]
    assert job["permissions"] == {
        "contents": "read",
        "packages": "write",
        "id-token": "write",
        "attestations": "write",
    }
    assert job["env"]["IMAGE"] == f"ghcr.io/{OWNER}/ckpt-exporter"
    used = [s["uses"].split("@")[0] for s in steps("image") if "uses" in s]
    assert used == [
        "actions/checkout",
        "docker/setup-qemu-action",
        "docker/setup-buildx-action",
        "docker/login-action",
        "docker/metadata-action",
        "docker/build-push-action",
        "actions/attest-build-provenance",
    ]
    assert step_using("image", "docker/metadata-action")["with"]["images"] == "${{ env.IMAGE }}"
    build = step_using("image", "docker/build-push-action")["with"]
    assert build["platforms"] == "linux/amd64,linux/arm64"
    assert (build["push"], build["sbom"], build["provenance"]) == (True, True, "mode=max")
    assert step_using("image", "actions/attest-build-provenance")["with"] == {
        "subject-name": "${{ env.IMAGE }}",
        "subject-digest": "${{ steps.build.outputs.digest }}",
        "push-to-registry": True,
    }


def test_chart_is_pushed_as_an_oci_artifact_after_the_image() -> None:
    job = workflow()["jobs"]["chart"]
    assert job["needs"] == ["version", "image"]
    assert job["env"]["CHARTS"] == f"ghcr.io/{OWNER}/charts"
    scripts = "\n".join(s.get("run", "") for s in job["steps"])
    assert "helm package helm/ckpt-exporter --destination dist" in scripts
    assert 'helm push "$FILE" "oci://$CHARTS"' in scripts


def test_pypi_uses_trusted_publishing_without_a_token() -> None:
    job = workflow()["jobs"]["pypi"]
    assert job["environment"]["name"] == "pypi"
    assert job["permissions"] == {"id-token": "write"}
    publish = step_using("pypi", "pypa/gh-action-pypi-publish")
    assert "with" not in publish  # no password / token input: PyPI trusts the OIDC identity
    assert re.findall(r"secrets\.(\w+)", WORKFLOW.read_text()) == ["GITHUB_TOKEN", "GITHUB_TOKEN"]


def test_the_chart_defaults_to_the_image_the_workflow_publishes() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    default_owner = "ckpt-exporter"
    assert values["registry"] + "/" + values["repository"] == (
        workflow()["jobs"]["image"]["env"]["IMAGE"].replace(OWNER, default_owner)
    )
    assert chart["home"] == f"https://github.com/{default_owner}/ckpt-exporter"
    assert (values["tag"], chart["appVersion"]) == ("", VERSION)  # the tag defaults to the release


# --- the version check ------------------------------------------------------------------------------


def test_release_version_accepts_the_declared_version() -> None:
    result = run("bash", "scripts/release-version.sh", f"v{VERSION}")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{VERSION}\n", "")


def test_release_version_refuses_another_tag() -> None:
    result = run("bash", "scripts/release-version.sh", "v9.9.9")
    assert result.returncode == 1
    assert result.stderr == (
        f"release-version: tag v9.9.9 does not match pyproject.toml's version {VERSION} "
        f"(expected tag v{VERSION})\n"
    )


def test_release_version_refuses_a_chart_with_another_app_version(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "release-version.sh", tmp_path / "scripts")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "helm" / "ckpt-exporter").mkdir(parents=True)
    chart = (CHART / "Chart.yaml").read_text().replace(f'appVersion: "{VERSION}"', 'appVersion: "0.0.9"')
    (tmp_path / "helm" / "ckpt-exporter" / "Chart.yaml").write_text(chart)
    result = run("bash", "scripts/release-version.sh", f"v{VERSION}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"release-version: Chart.yaml appVersion 0.0.9 differs from pyproject.toml's version {VERSION}\n"
    )
