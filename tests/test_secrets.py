"""The key appears nowhere: not in any log line at DEBUG (httpx, httpcore, aiohttp included), not in
exception texts, not in /metrics, not in check-config, whatever faults the API serves.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer, Fault
from ckpt_exporter.logging_setup import JsonFormatter, RedactingFilter, redact, register_secret
from tests.helpers import API_KEY, DrainedExporterProcess, wait_for

SECRET = "sk-proj-unit-test-secret-0123456789"


def emit(record_args: tuple[object, ...], exc: BaseException | None = None, fmt: str = "text") -> str:
    register_secret(SECRET)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"test_secrets.{fmt}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        if exc is not None:
            raise exc
        logger.debug(*record_args)  # type: ignore[arg-type]
    except BaseException:
        logger.exception(*record_args)  # type: ignore[arg-type]
    return stream.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_filter_redacts_messages_args_and_exception_texts(fmt: str) -> None:
    out = emit(("headers %s", {"Authorization": f"Bearer {SECRET}"}), fmt=fmt)
    out += emit(("failed for %r", SECRET), RuntimeError(f"request with key {SECRET} failed"), fmt=fmt)
    out += emit(("azure %s", "api-key: abcdef123456"), fmt=fmt)
    assert SECRET not in out and "abcdef123456" not in out
    assert out.count("[REDACTED]") >= 4
    if fmt == "json":
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert any(
            "RuntimeError: request with key [REDACTED] failed" in line.get("exception", "") for line in lines
        )


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "job ftjob-abc: new checkpoint at step 100 (train_loss=0.5) ft:gpt-4o-mini:org::x:ckpt-step-100"
    assert redact(text) == text
    assert redact("task-runner sk-abcdefgh") == "task-runner [REDACTED]"
    # The settings' own words are not keys.
    hint = "api_key: no API key; set CKPT_EXPORTER_API_KEY, or api_key_file: /path, a Bearer token"
    assert redact(hint) == hint
    assert redact("{'api-key': 'abcdef0123456789'}") == "{'api-key': '[REDACTED]'}"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "ckpt_exporter", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


# Every fault of the fake API, one job each, served until the end of the run.
FAULTS = [
    Fault.http(500),
    Fault.http(429, {"Retry-After": "1"}),
    Fault.http(503, {"x-should-retry": "false"}),
    Fault.http(403),
    Fault.http(404),
    Fault.hang(3),
    Fault("reset"),
    Fault("close"),
    Fault("truncated"),
    Fault("malformed_json"),
    Fault("echo_auth"),
    Fault.huge_page(2000),
    Fault("repeated_cursor"),
    Fault("empty_page_more"),
    *(Fault(kind) for kind in ("wrong_types", "metrics_not_object", "missing_id", "missing_step", "nan")),
    *(Fault(kind) for kind in ("infinity", "other_job")),
]


SERVED = {"http", "hang", "reset", "close", "truncated", "echo_auth", "nan", "repeated_cursor"}


@pytest.mark.integration
@pytest.mark.parametrize(("log_format", "transport"), [("text", "aiohttp"), ("json", "httpx")])
def test_the_key_appears_nowhere_at_debug_through_every_fault(log_format: str, transport: str) -> None:
    api = FakeApi(api_key=API_KEY)
    jobs = [f"ftjob-secret{n:02d}" for n in range(len(FAULTS))]
    for n, job_id in enumerate(jobs):
        api.add_job(job_id)
        api.add_checkpoint(job_id, 10, {"train_loss": 0.5 + n / 100})
    with FakeApiServer(api) as server:
        env = {
            "CKPT_EXPORTER_API_BASE_URL": server.base_url,
            "CKPT_EXPORTER_API_KEY": API_KEY,
            "CKPT_EXPORTER_JOBS": ",".join(jobs),
            "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.3",
            "CKPT_EXPORTER_REQUEST_TIMEOUT_SECONDS": "1",
            "CKPT_EXPORTER_MAX_RETRIES": "1",
            "CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "1000",
            "CKPT_EXPORTER_LOG_LEVEL": "DEBUG",
            "CKPT_EXPORTER_LOG_FORMAT": log_format,
            "CKPT_EXPORTER_HTTP_TRANSPORT": transport,
        }
        exporter = DrainedExporterProcess(env)  # DEBUG writes more than a pipe holds
        try:
            exporter.wait_ready()
            for job_id, fault in zip(jobs, FAULTS, strict=True):
                api.inject(job_id, fault, times=None)
            # Until every kind has been served at least once: the 429 holds the whole account for a
            # second at each of its polls, so no fixed wait is long enough on a loaded machine.
            assert wait_for(lambda: {s.kind for s in api.served()} >= SERVED, 60), api.served()
            api.clear_faults()
            api.api_key = API_KEY + "-rotated"  # now every request is a 401
            # the exporter's own 401 line is written: the rejected-key path ran before the stop
            assert wait_for(lambda: "(HTTP 401)" in exporter.output_so_far(), 10)
            metrics = exporter.metrics()
        finally:
            output = exporter.stop()
        served = {served.kind for served in api.served()}
    assert served >= SERVED
    assert exporter.proc.returncode == 0
    # The output is the DEBUG output of every library: the requests were logged...
    assert "fine_tuning/jobs/ftjob-secret00/checkpoints" in output
    assert ("httpcore" in output) == (transport == "httpx")
    # ...and the key never was, nor anything after "Bearer".
    assert API_KEY not in output and API_KEY not in metrics
    assert "Bearer sk" not in output and "Bearer [REDACTED]" in output  # echo_auth's echo, redacted
    if log_format == "json":
        lines = [line for line in output.splitlines() if line.strip()]
        assert all(line.startswith("{") for line in lines), [ln for ln in lines if not ln.startswith("{")][:3]


def test_check_config_and_settings_errors_never_show_the_key() -> None:
    env = {"CKPT_EXPORTER_API_KEY": API_KEY, "CKPT_EXPORTER_JOBS": "ftjob-a"}
    done = run_cli("check-config", env=env)
    assert done.returncode == 0 and API_KEY not in done.stdout + done.stderr
    assert json.loads(done.stdout)["api_key"] == "********"
    done = run_cli("check-config", env={**env, "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": API_KEY})
    assert done.returncode == 2 and API_KEY not in done.stdout + done.stderr
    done = run_cli(
        "check-config", env={**env, "CKPT_EXPORTER_LISTEN_PORT": "x", "CKPT_EXPORTER_API_KEY": API_KEY}
    )
    assert done.returncode == 2 and API_KEY not in done.stdout + done.stderr
