"""Outside references: the official `openai` SDK reads our fake API; Prism serves the real API's spec.

The fake API is what the demo and most tests poll, so its documents must be the real API's: the SDK's
own models (openai.types.fine_tuning) parse every list and job it serves, its own paginator walks
our pages with `after`, and the values it reads are exactly the ones the fake was given. And the
exporter polls Stoplight Prism serving the published OpenAPI document with random schema-valid
answers: whatever the spec allows must never break a poll or the exposition.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from itertools import chain

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from ckpt_exporter.fake import FakeApi, FakeApiServer
from tests.helpers import (
    API_KEY,
    REPO,
    DrainedExporterProcess,
    ExporterProcess,
    free_port,
    parse_samples,
    require_tool,
    wait_for,
)

openai = pytest.importorskip("openai")

JOB = "ftjob-sdk0000000000000000001"


@pytest.fixture(params=[True, False], ids=["newest-first", "oldest-first"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[FakeApi, FakeApiServer]]:
    api = FakeApi(api_key=API_KEY, newest_first=request.param)
    api.add_job(JOB, status="running", model="gpt-4o-mini-2024-07-18", suffix="sdk")
    for step in range(1, 26):  # more than one page at the SDK's default limit of 10
        api.add_checkpoint(JOB, step * 10, {"train_loss": 1.0 / step, "full_valid_loss": 2.0 / step})
    for step in range(1, 4):
        api.add_event(
            JOB, f"Step {step}/30", data={"step": step, "train_loss": 0.5 * step, "total_steps": 30}
        )
    api.add_event(JOB, "a message")
    with FakeApiServer(api) as server:
        yield api, server


def sdk(server: FakeApiServer) -> object:
    return openai.OpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)


def test_the_sdk_pages_through_every_checkpoint_with_its_own_models(
    served: tuple[FakeApi, FakeApiServer],
) -> None:
    _, server = served
    client = sdk(server)
    listed = list(client.fine_tuning.jobs.checkpoints.list(JOB))  # type: ignore[attr-defined]
    by_step = {c.step_number: c for c in listed}
    assert len(listed) == 25
    assert sorted(by_step) == [step * 10 for step in range(1, 26)]
    for step in range(1, 26):
        checkpoint = by_step[step * 10]
        assert checkpoint.fine_tuning_job_id == JOB
        assert checkpoint.object == "fine_tuning.job.checkpoint"
        assert checkpoint.metrics.train_loss == 1.0 / step
        assert checkpoint.metrics.full_valid_loss == 2.0 / step
        assert checkpoint.metrics.valid_loss is None


def test_the_sdk_reads_the_job_the_listing_and_the_events(served: tuple[FakeApi, FakeApiServer]) -> None:
    _, server = served
    client = sdk(server)
    job = client.fine_tuning.jobs.retrieve(JOB)  # type: ignore[attr-defined]
    assert (job.id, job.status, job.model, job.object) == (
        JOB,
        "running",
        "gpt-4o-mini-2024-07-18",
        "fine_tuning.job",
    )
    assert [j.id for j in client.fine_tuning.jobs.list()] == [JOB]  # type: ignore[attr-defined]
    events = list(client.fine_tuning.jobs.list_events(JOB))  # type: ignore[attr-defined]
    assert sorted(e.message for e in events) == ["Step 1/30", "Step 2/30", "Step 3/30", "a message"]
    metrics = {e.data["step"]: e.data["train_loss"] for e in events if e.type == "metrics"}
    assert metrics == {1: 0.5, 2: 1.0, 3: 1.5}


def test_the_sdk_is_refused_with_the_apis_error_shape_on_a_wrong_key(
    served: tuple[FakeApi, FakeApiServer],
) -> None:
    _, server = served
    client = openai.OpenAI(api_key="sk-wrong", base_url=server.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.fine_tuning.jobs.retrieve(JOB)
    assert caught.value.status_code == 401


# --- Stoplight Prism serving the published OpenAPI document ------------------------------------

SPEC = REPO / "tests" / "data" / "openai-fine-tuning-openapi.json"
PRISM = REPO / ".tools" / "prism" / "node_modules" / ".bin" / "prism"


@contextlib.contextmanager
def prism(*flags: str) -> Iterator[str]:
    """Prism mocking the spec on a free loopback port (`-d`: random schema-valid answers)."""
    if not PRISM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("Prism is required in CI: bash scripts/install-prism.sh")
        pytest.skip("Prism is not installed (bash scripts/install-prism.sh)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(PRISM), "mock", "-h", "127.0.0.1", "-p", str(port), *flags, str(SPEC)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        try:
            return httpx.get(url + "/fine_tuning/jobs", timeout=2).status_code == 401  # wants a key
        except httpx.TransportError:
            return False

    try:
        assert wait_for(listening, 60), "Prism did not start"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def poll_cycles(text: str) -> float:
    return parse_samples(text).get(("ckpt_exporter_poll_duration_seconds_count", frozenset()), 0.0)


def assert_valid_exposition(exporter: ExporterProcess) -> str:
    """/metrics parses with both of prometheus_client's parsers and promtool, with no duplicate series."""
    text = exporter.metrics()
    samples = list(chain.from_iterable(f.samples for f in text_string_to_metric_families(text)))
    keys = [(s.name, frozenset(s.labels.items())) for s in samples]
    assert len(keys) == len(set(keys)), "duplicate series"
    openmetrics = exporter.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    list(openmetrics_families(openmetrics))
    checked = subprocess.run(
        [require_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return text


@pytest.mark.integration
def test_random_schema_valid_answers_never_break_a_poll_or_the_exposition() -> None:
    with prism("-d") as url:
        exporter = DrainedExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": url,
                "CKPT_EXPORTER_API_KEY": API_KEY,
                "CKPT_EXPORTER_JOBS": "ftjob-prism-a,ftjob-prism-b",
                "CKPT_EXPORTER_DISCOVER": "true",
                "CKPT_EXPORTER_DISCOVERY_INTERVAL_SECONDS": "1",
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.5",
                "CKPT_EXPORTER_MAX_RETRIES": "0",
            }
        )
        try:
            exporter.wait_ready(timeout=30)
            seen = poll_cycles(assert_valid_exposition(exporter))
            for _ in range(10):  # ten more cycles of random answers, the exposition valid after each
                assert wait_for(lambda s=seen: poll_cycles(exporter.metrics()) > s, 30), "polls stopped"
                seen = poll_cycles(assert_valid_exposition(exporter))
            assert exporter.proc.poll() is None
        finally:
            output = exporter.stop()
    assert "Traceback" not in output, output


@pytest.mark.integration
def test_the_spec_s_static_answers_are_refused_for_what_they_are() -> None:
    """Prism's static answers are the spec's placeholders: a job document whose id is "string" (not
    the job asked for) and a checkpoints page that always claims more behind the same cursor. Neither
    is data: the job is down with exactly those two reasons, exports nothing made up, and each
    problem is logged once, however many polls repeat it."""
    with prism() as url:
        exporter = DrainedExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": url,
                "CKPT_EXPORTER_API_KEY": API_KEY,
                "CKPT_EXPORTER_JOBS": "ftjob-prism",
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.3",
            }
        )
        try:
            exporter.wait_ready(timeout=30)

            def reasons() -> dict[str, float]:
                samples = parse_samples(exporter.metrics(), "ckpt_exporter_api_errors_total")
                return {dict(labels)["reason"]: value for (_, labels), value in samples.items()}

            assert wait_for(lambda: min(reasons().values(), default=0) >= 3, 30), reasons()
            text = assert_valid_exposition(exporter)
            assert set(reasons()) == {"pagination_loop", "wrong_job"}
            assert parse_samples(text, "ckpt_exporter_job_up") == {
                ("ckpt_exporter_job_up", frozenset({("job_id", "ftjob-prism")})): 0.0
            }
            assert parse_samples(text, "openai_fine_tuning_") == {}
        finally:
            output = exporter.stop()
    warnings = [line for line in output.splitlines() if " WARNING " in line]
    assert len(warnings) == 2, output
    assert "Traceback" not in output
