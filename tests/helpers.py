"""Shared test helpers: free ports, external tools, the exporter as a real process, parsing /metrics."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ckpt_exporter.fake import FakeApiServer
from ckpt_exporter.fake.identity import FakeIdentityServer
from ckpt_exporter.models import METRIC_FIELDS

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "helm" / "ckpt-exporter" / "files" / "dashboard.json"
API_KEY = "sk-test-0123456789abcdefSECRET"  # the fake API's key in the tests
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str, *installed_at: Path) -> str:
    """The tool's path: the first of installed_at that runs, else name on PATH.

    In CI (CI=true) a missing tool fails the test instead of skipping it.
    """
    path = next((str(p) for p in installed_at if os.access(p, os.X_OK)), None) or shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def parse_samples(text: str, prefix: str = "") -> Samples:
    """{(sample name, labels): value} for every sample whose name starts with prefix."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def clean_environment() -> dict[str, str]:
    """This process's environment without any of the exporter's or OpenAI's variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}


def run_cli(
    *args: str, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """`python -m ckpt_exporter ARGS` to its end, in a clean environment plus env."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "ckpt_exporter", *args],
        env={**clean_environment(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        **kwargs,
    )


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class ExporterProcess:
    """The real `python -m ckpt_exporter` process, configured through its environment."""

    def __init__(self, env: dict[str, str], args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}
        full_env.update(
            {
                "CKPT_EXPORTER_LISTEN_ADDRESS": "127.0.0.1",
                "CKPT_EXPORTER_LISTEN_PORT": str(self.port),
                "PYTHONUNBUFFERED": "1",
                **env,
            }
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckpt_exporter", *(args or [])],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5, **kwargs)  # type: ignore[arg-type]

    def metrics(self) -> str:
        return self.get("/metrics").text

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited early:\n{self.stop()}")
            try:
                return self.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(ready, timeout), "exporter did not become ready"

    def stop(self, timeout: float = 10) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output += out or ""
        return self.output


class DrainedExporterProcess(ExporterProcess):
    """An ExporterProcess whose output is read while it runs.

    ExporterProcess reads the pipe only at stop(): a process that logs more than the pipe holds
    (64 KiB: DEBUG logging, a long soak) blocks on its next log line until then.
    """

    def __init__(self, env: dict[str, str], args: list[str] | None = None) -> None:
        super().__init__(env, args)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, name="drain", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    def output_so_far(self) -> str:
        return "".join(self._lines)

    def stop(self, timeout: float = 10) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        self.output = "".join(self._lines)
        return self.output


# -- the checkpoint samples a fake API's jobs must give --------------------------------------


def metrics_for(job_index: int, step: int) -> dict[str, float]:
    """Distinct values per job and step, so that a mixed-up sample shows."""
    base = 0.5 + job_index / 100
    return {name: round(base + i / 10 + step / 100_000, 6) for i, name in enumerate(METRIC_FIELDS)}


def expected_samples(api: Any, jobs: list[str]) -> Samples:
    """The checkpoint samples the exporter must serve for `jobs` of a fake API (FakeApi)."""
    expected: Samples = {}
    for job_id in jobs:
        checkpoints = api.jobs[job_id].checkpoints
        for c in checkpoints:
            labels = {"job_id": job_id, "step": str(c["step_number"])}
            key = frozenset(labels.items())
            for name in METRIC_FIELDS:
                if c["metrics"].get(name) is not None:
                    expected[(f"openai_fine_tuning_checkpoint_{name}", key)] = c["metrics"][name]
            expected[("openai_fine_tuning_checkpoint_created_timestamp_seconds", key)] = c["created_at"]
            info = {**labels, "checkpoint_id": c["id"], "model": c["fine_tuned_model_checkpoint"]}
            expected[("openai_fine_tuning_checkpoint_info", frozenset(info.items()))] = 1.0
        if checkpoints:
            latest = max(c["step_number"] for c in checkpoints)
            expected[("openai_fine_tuning_job_latest_step", frozenset({("job_id", job_id)}))] = latest
    return expected


def expected_best_checkpoint(job_id: str, checkpoints: list[dict[str, Any]], method: str) -> Samples:
    """openai_fine_tuning_job_best_checkpoint_step, from a fake job's raw checkpoints by the
    documented rule: the highest full_valid_mean_reward for reinforcement jobs, else the lowest
    full_valid_loss, else the lowest valid_loss; only checkpoints having the field; ties to the
    earlier step."""
    rules = (
        [("full_valid_mean_reward", max)]
        if method == "reinforcement"
        else [("full_valid_loss", min), ("valid_loss", min)]
    )
    for name, pick in rules:
        having = [c for c in checkpoints if type(c["metrics"].get(name)) in (int, float)]
        if having:
            value = pick(c["metrics"][name] for c in having)
            best = min(
                (c for c in having if c["metrics"][name] == value),
                key=lambda c: (c["step_number"], c["created_at"]),
            )
            labels = {"job_id": job_id, "metric": name, "model": best["fine_tuned_model_checkpoint"]}
            return {
                ("openai_fine_tuning_job_best_checkpoint_step", frozenset(labels.items())): best[
                    "step_number"
                ]
            }
    return {}


def expected_job_samples(document: dict[str, Any], account: str = "default") -> Samples:
    """Status, info (with the method) and hyperparameters of a fake job's document."""
    job_id = document["id"]
    method = document.get("method") or {"type": "supervised"}
    details = method.get(method["type"]) or {}
    hyperparameters = details.get("hyperparameters", document.get("hyperparameters")) or {}
    grader = details.get("grader") or {}
    info = {
        "job_id": job_id,
        "model": document["model"],
        "fine_tuned_model": document["fine_tuned_model"] or "",
        "suffix": document["user_provided_suffix"] or "",
        "account": account,
        "method": method["type"],
        "reasoning_effort": hyperparameters.get("reasoning_effort", ""),
        "grader_type": grader.get("type", ""),
    }
    expected: Samples = {
        (
            "openai_fine_tuning_job_status",
            frozenset({("job_id", job_id), ("status", document["status"])}),
        ): 1.0,
        ("openai_fine_tuning_job_info", frozenset(info.items())): 1.0,
    }
    for name, value in hyperparameters.items():
        if type(value) in (int, float):
            labels = frozenset({("job_id", job_id), ("name", name)})
            expected[("openai_fine_tuning_job_hyperparameter", labels)] = value
    return expected


def checkpoint_samples(text: str, jobs: list[str]) -> Samples:
    samples = {
        **parse_samples(text, "openai_fine_tuning_checkpoint_"),
        **parse_samples(text, "openai_fine_tuning_job_latest_step"),
    }
    return {key: value for key, value in samples.items() if dict(key[1]).get("job_id") in jobs}


# -- the Grafana dashboard -------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def substitute_grafana_variables(
    expr: str,
    job_regex: str,
    rate_interval: str = "1m",
    range_: str = "1h",
    reinforcement_job_regex: str | None = None,
) -> str:
    """What Grafana sends to Prometheus for an expression (also used by the e2e test).

    reinforcement_job (the selected jobs that are reinforcement jobs) defaults to every selected job.
    """
    reinforcement = job_regex if reinforcement_job_regex is None else reinforcement_job_regex
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$reinforcement_job", reinforcement)
        .replace("$__range", range_)
        .replace("$__interval", rate_interval)
        .replace("${job_id}", job_regex)
        .replace("$job_id", job_regex)
    )


# -- keyless Azure (tests/test_entra*.py): the fake Foundry project endpoint, the exporter's env ----

FOUNDRY_PROJECT = "/api/projects/demo-project/openai/v1"  # Foundry's project endpoint, under the resource
KEYLESS_JOBS = ("ftjob-entra1", "ftjob-entra2")


def keyless_env(
    identity_server: FakeIdentityServer, api_server: FakeApiServer, **extra: str
) -> dict[str, str]:
    """The exporter's environment for keyless Azure, signing in at the fake managed identity."""
    return {
        "CKPT_EXPORTER_API_FLAVOR": "azure",
        "CKPT_EXPORTER_AZURE_AUTH": "entra",
        "CKPT_EXPORTER_API_BASE_URL": api_server.base_url,
        "CKPT_EXPORTER_JOBS": ",".join(KEYLESS_JOBS),
        "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "1",
        "IDENTITY_ENDPOINT": identity_server.identity_endpoint,
        "IDENTITY_HEADER": identity_server.identity.identity_header,
        **extra,
    }


def exported_steps(text: str, job_id: str) -> dict[int, float]:
    samples = parse_samples(text, "openai_fine_tuning_checkpoint_train_loss")
    out = {}
    for (_, labels), value in samples.items():
        label = dict(labels)
        if label["job_id"] == job_id:
            out[int(label["step"])] = value
    return out


def job_up(text: str) -> dict[str, float]:
    samples = parse_samples(text, "ckpt_exporter_job_up")
    return {dict(labels)["job_id"]: value for (_, labels), value in samples.items()}


def token_failures(text: str) -> dict[str, float]:
    samples = parse_samples(text, "ckpt_exporter_token_failures_total")
    return {dict(labels)["reason"]: value for (_, labels), value in samples.items()}


def sign_in_errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR " in line and "Entra ID" in line]


def answers(exporter: ExporterProcess) -> bool:
    try:
        return exporter.get("/metrics").status_code == 200
    except Exception:
        return False
