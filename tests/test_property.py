"""Property: whatever interleaving of new checkpoints, removals, faults and polls, once the faults
clear and a full read has run, the exported checkpoint series equal the API's checkpoints exactly.

Hypothesis makes the interleavings; the Poller runs in-process with its real ApiClient over a real
loopback server (the fake API), with no retries and no sleeping, so time plays no part.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt_exporter.api import ApiClient
from ckpt_exporter.exposition import ExpositionCache
from ckpt_exporter.fake import FakeApi, FakeApiServer, Fault
from ckpt_exporter.models import METRIC_FIELDS
from ckpt_exporter.poller import Poller
from ckpt_exporter.selfmetrics import SelfMetrics
from ckpt_exporter.transport import make_http_client
from tests.helpers import expected_samples, parse_samples

JOBS = 3
FULL_READ_EVERY = 3
FAULTS = [
    Fault.http(500),
    Fault.http(503),
    Fault.http(400),
    Fault("reset"),
    Fault("close"),
    Fault("truncated"),
    Fault("malformed_json"),
    Fault("wrong_types"),
    Fault("metrics_not_object"),
    Fault("missing_id"),
    Fault("nan"),
    Fault("other_job"),
    Fault("repeated_cursor"),
    Fault("empty_page_more"),
    Fault.huge_page(50),
]

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
metrics = st.fixed_dictionaries({}, optional={name: values | st.none() for name in METRIC_FIELDS})
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, JOBS - 1), st.lists(metrics, min_size=1, max_size=4)),
        st.tuples(st.just("remove"), st.integers(0, JOBS - 1), st.integers(0, 20)),
        st.tuples(st.just("fault"), st.integers(0, JOBS - 1), st.sampled_from(FAULTS), st.integers(1, 3)),
        st.tuples(st.just("poll")),
    ),
    max_size=15,
)

_examples = itertools.count()


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeApi, FakeApiServer]]:
    api = FakeApi()
    api.record_requests = False
    with FakeApiServer(api) as server:
        yield api, server


async def no_sleep(seconds: float) -> None:
    return None


async def run(api: FakeApi, server: FakeApiServer, jobs: list[str], plan: list[tuple[Any, ...]]) -> str:
    http = make_http_client(server.base_url, auth=None, headers={}, timeout=5, max_connections=8)
    client = ApiClient(http, max_retries=0, sleep=no_sleep)
    exposition = ExpositionCache()
    poller = Poller(client, exposition, SelfMetrics(), page_size=2, full_read_every=FULL_READ_EVERY)
    poller.set_jobs(jobs)
    next_step = dict.fromkeys(jobs, 0)
    try:
        await poller.poll_once()
        for step in plan:
            if step[0] == "add":
                job_id = jobs[step[1]]
                for reported in step[2]:
                    next_step[job_id] += 10
                    api.add_checkpoint(job_id, next_step[job_id], reported)
            elif step[0] == "remove":
                checkpoints = api.jobs[jobs[step[1]]].checkpoints
                if checkpoints:
                    api.remove_checkpoint(jobs[step[1]], checkpoints[step[2] % len(checkpoints)]["id"])
            elif step[0] == "fault":
                api.inject(jobs[step[1]], step[2], times=step[3], endpoint="checkpoints")
            else:
                await poller.poll_once()
        for job_id in jobs:
            api.clear_faults(job_id)
        for _ in range(FULL_READ_EVERY + 1):  # at least one full read of every job
            await poller.poll_once()
    finally:
        await poller.stop()
        await http.aclose()
    return exposition.body(openmetrics=False).decode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps, orders=st.lists(st.booleans(), min_size=JOBS, max_size=JOBS), start=st.integers(0, 3))
def test_after_faults_clear_the_exported_set_is_the_api_s_set(
    fake: tuple[FakeApi, FakeApiServer], plan: list[tuple[Any, ...]], orders: list[bool], start: int
) -> None:
    api, server = fake
    example = next(_examples)
    jobs = [f"ftjob-p{example}x{n}" for n in range(JOBS)]
    for job_id, newest_first in zip(jobs, orders, strict=True):
        api.add_job(job_id, newest_first=newest_first)
        for n in range(start):
            api.add_checkpoint(job_id, -10 * (start - n), {"train_loss": float(n)})
    text = asyncio.run(run(api, server, jobs, plan))
    exported = {
        key: value
        for key, value in {
            **parse_samples(text, "openai_fine_tuning_checkpoint_"),
            **parse_samples(text, "openai_fine_tuning_job_latest_step"),
        }.items()
        if dict(key[1]).get("job_id") in jobs
    }
    assert exported == expected_samples(api, jobs)
    up = {dict(k[1])["job_id"]: v for k, v in parse_samples(text, "ckpt_exporter_job_up").items()}
    assert up == dict.fromkeys(jobs, 1.0)
