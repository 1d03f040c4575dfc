"""The API client: retries and backoff, Retry-After in its three forms, x-should-retry, the request
budget, the x-ratelimit-* pause, error reasons, key rotation and redaction.

httpx.MockTransport answers; time is a fake clock with a fake sleep, so nothing waits for real
(except the request-budget test, which measures aiolimiter's real spacing over half a second).
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from ckpt_exporter.api import ApiClient
from ckpt_exporter.gate import MAX_HOLD, RequestGate, rate_budget
from ckpt_exporter.logging_setup import redact
from ckpt_exporter.models import ApiError
from ckpt_exporter.retries import MAX_RETRY_AFTER, backoff_seconds, parse_duration, retry_after_seconds
from ckpt_exporter.transport import KeySource

PAGE = {"object": "list", "data": [], "has_more": False}
Answer = httpx.Response | Exception | Callable[[httpx.Request], Any]


class FakeTime:
    """A clock that only moves when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Api:
    """A scripted API: answers in order (the last one repeats), and records each request."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        result = answer(request)
        return await result if asyncio.iscoroutine(result) else result  # type: ignore[no-any-return]


def make_client(
    api: Api, fake_time: FakeTime | None = None, *, rng: float = 0.0, **kwargs: Any
) -> tuple[ApiClient, list[tuple[str, str]]]:
    observed: list[tuple[str, str]] = []
    fake_time = fake_time or FakeTime()
    http = httpx.AsyncClient(base_url="https://api.test/v1/", transport=httpx.MockTransport(api.handler))
    kwargs.setdefault("max_retries", 2)
    client = ApiClient(
        http,
        observe=lambda endpoint, code: observed.append((endpoint, code)),
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        rng=lambda: rng,
        **kwargs,
    )
    return client, observed


def status(code: int, headers: dict[str, str] | None = None, message: str = "boom") -> httpx.Response:
    body = {"error": {"message": message, "type": "x", "param": None, "code": None}}
    return httpx.Response(code, json=body, headers=headers)


def ok(document: Any = PAGE, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(200, json=document, headers=headers)


async def list_page(client: ApiClient, limit: int = 20) -> Any:
    return await client.list_checkpoints("ftjob-1", after=None, limit=limit)


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        status(408),
        status(409),
        status(429),
        status(500),
        status(502),
        status(503),
        status(504),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("truncated"),
    ],
    ids=lambda f: str(f.status_code) if isinstance(f, httpx.Response) else type(f).__name__,
)
async def test_retryable_failures_are_retried_after_the_sdk_backoff(failure: Answer) -> None:
    api, fake_time = Api(failure, ok()), FakeTime()
    client, observed = make_client(api, fake_time)
    page = await list_page(client)
    assert (page.data, page.has_more) == ([], False)
    assert len(api.requests) == 2
    assert fake_time.sleeps == [0.5]
    first_code = str(failure.status_code) if isinstance(failure, httpx.Response) else "error"
    assert observed == [("checkpoints", first_code), ("checkpoints", "200")]


@pytest.mark.parametrize(("rng", "factor"), [(0.0, 1.0), (1.0, 0.75)])
async def test_backoff_doubles_from_half_a_second_to_eight_with_jitter(rng: float, factor: float) -> None:
    api, fake_time = Api(status(500)), FakeTime()
    client, _ = make_client(api, fake_time, rng=rng, max_retries=6)
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert (caught.value.reason, caught.value.status, caught.value.retry_after) == ("http_500", 500, None)
    assert len(api.requests) == 7
    assert fake_time.sleeps == [d * factor for d in (0.5, 1.0, 2.0, 4.0, 8.0, 8.0)]
    assert backoff_seconds(10, lambda: 0.5) == 8.0 * 0.875


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
async def test_other_statuses_fail_at_once(code: int) -> None:
    api, fake_time = Api(status(code, message="no such thing")), FakeTime()
    client, _ = make_client(api, fake_time)
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert (caught.value.reason, caught.value.status, len(api.requests), fake_time.sleeps) == (
        f"http_{code}",
        code,
        1,
        [],
    )
    assert str(caught.value).startswith(f"HTTP {code}")
    assert str(caught.value).endswith(": no such thing")


async def test_status_hints_say_what_to_check() -> None:
    hints = {
        401: "check api_key / api_key_file",
        403: "check its permissions, and organization / project",
        404: "no such fine-tuning job",
    }
    for code, hint in hints.items():
        client, _ = make_client(Api(status(code)))
        with pytest.raises(ApiError, match=hint):
            await list_page(client)


@pytest.mark.parametrize(
    ("answer", "requests"),
    [
        (status(400, {"x-should-retry": "true"}), 3),
        (status(500, {"x-should-retry": "false"}), 1),
        (status(429, {"x-should-retry": "false"}), 1),
        (status(503, {"x-should-retry": "maybe"}), 3),  # not true/false: the status decides
    ],
)
async def test_x_should_retry_overrides_the_status(answer: httpx.Response, requests: int) -> None:
    api = Api(answer)
    client, _ = make_client(api)
    with pytest.raises(ApiError):
        await list_page(client)
    assert len(api.requests) == requests


async def test_max_retries_zero_means_one_attempt() -> None:
    api = Api(status(500))
    client, _ = make_client(api, max_retries=0)
    with pytest.raises(ApiError):
        await list_page(client)
    assert len(api.requests) == 1


# -- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),  # milliseconds win, as in the SDK
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": "0"}, 0.5),  # no wait asked: the backoff applies
        ({"Retry-After": "soon"}, 0.5),
        ({"Retry-After": "nan"}, 0.5),
        ({"Retry-After": "inf"}, 0.5),
        ({}, 0.5),
    ],
)
async def test_retry_after_is_waited_before_the_retry(headers: dict[str, str], expected: float) -> None:
    api, fake_time = Api(status(429, headers), ok()), FakeTime()
    client, _ = make_client(api, fake_time)
    await list_page(client)
    assert fake_time.sleeps == [expected]


async def test_retry_after_as_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 3, usegmt=True)  # whole seconds
    date_at = email.utils.parsedate_to_datetime(when).timestamp()
    api, fake_time = Api(status(503, {"Retry-After": when}), ok()), FakeTime()
    client, _ = make_client(api, fake_time)
    before = time.time()
    await list_page(client)
    after = time.time()
    # The wait is the date less the wall clock when the answer came, read between before and after.
    assert len(fake_time.sleeps) == 1 and date_at - after <= fake_time.sleeps[0] <= date_at - before
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert retry_after_seconds(status(503, {"Retry-After": past})) == 0.0
    assert retry_after_seconds(status(503, {"Retry-After": "Mon, 99 Foo 2024"})) is None


async def test_retry_after_longer_than_the_cap_is_left_to_the_poller() -> None:
    api, fake_time = Api(status(429, {"Retry-After": "200"}), ok()), FakeTime()
    client, _ = make_client(api, fake_time)
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert (caught.value.reason, caught.value.retry_after) == ("http_429", 200.0)
    assert (len(api.requests), fake_time.sleeps) == (1, [])
    assert MAX_RETRY_AFTER == 120.0


async def test_retries_spent_carry_the_last_retry_after() -> None:
    api, fake_time = Api(status(429, {"Retry-After": "2"})), FakeTime()
    client, _ = make_client(api, fake_time, max_retries=1)
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert (caught.value.reason, caught.value.retry_after, fake_time.sleeps) == ("http_429", 2.0, [2.0])
    api = Api(status(503, {"retry-after-ms": "700", "x-should-retry": "false"}))
    client, _ = make_client(api)
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert (caught.value.retry_after, len(api.requests)) == (0.7, 1)


async def test_a_retry_after_on_a_503_holds_every_request_about_that_job_and_only_that_job() -> None:
    api, fake_time = Api(status(503, {"Retry-After": "2"}), ok()), FakeTime()
    client, _ = make_client(api, fake_time, max_retries=0)
    with pytest.raises(ApiError):
        await client.list_checkpoints("ftjob-a", after=None, limit=20)
    await client.list_jobs(after=None, limit=100)  # the listing: not held
    await client.list_events("ftjob-b", after=None, limit=100)  # another job: not held
    assert fake_time.sleeps == []
    await client.list_events("ftjob-a", after=None, limit=100)  # the same job: held
    assert fake_time.sleeps == [2.0]
    await client.get_job("ftjob-a")  # the hold is over
    assert (fake_time.sleeps, len(api.requests)) == ([2.0], 5)


async def test_a_hold_beyond_the_cap_fails_the_job_s_requests_without_sending_them() -> None:
    api, fake_time = Api(status(429, {"Retry-After": "200"}), ok()), FakeTime()
    client, _ = make_client(api, fake_time)
    with pytest.raises(ApiError):
        await client.list_checkpoints("ftjob-a", after=None, limit=20)
    fake_time.now += 50
    with pytest.raises(ApiError) as caught:
        await client.list_events("ftjob-a", after=None, limit=100)
    assert (caught.value.reason, caught.value.retry_after, len(api.requests)) == ("http_429", 150.0, 1)
    fake_time.now += 150
    await client.list_events("ftjob-a", after=None, limit=100)
    assert (len(api.requests), fake_time.sleeps) == (2, [])


async def test_a_429_holds_every_request_of_the_account_for_the_time_it_asks_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, fake_time = Api(status(429, {"Retry-After": "30"}), ok()), FakeTime()
    client, _ = make_client(api, fake_time, max_retries=0)
    with caplog.at_level(logging.WARNING, logger="ckpt_exporter.api"):
        with pytest.raises(ApiError):
            await client.list_checkpoints("ftjob-a", after=None, limit=20)
        await client.list_events("ftjob-b", after=None, limit=100)  # another job: held too
        assert fake_time.sleeps == [30.0]
        await client.list_jobs(after=None, limit=100)  # the hold is over
    assert (fake_time.sleeps, len(api.requests)) == ([30.0], 3)
    assert [r.getMessage() for r in caplog.records] == [
        "account default: HTTP 429 asked to wait 30s: holding every request of the account for 30s"
    ]


@pytest.mark.parametrize("asked", ["1e9", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_retry_after_of_years_holds_the_account_for_the_cap_only(asked: str) -> None:
    api, fake_time = Api(status(429, {"Retry-After": asked}), ok()), FakeTime()
    client, _ = make_client(api, fake_time)
    with pytest.raises(ApiError):
        await client.list_checkpoints("ftjob-a", after=None, limit=20)
    assert client.gate.held_for("ftjob-b") == MAX_HOLD
    with pytest.raises(ApiError) as caught:  # beyond what is waited in place: fails unsent
        await client.list_events("ftjob-b", after=None, limit=100)
    assert (caught.value.reason, caught.value.retry_after, len(api.requests)) == ("http_429", MAX_HOLD, 1)
    fake_time.now += MAX_HOLD
    await client.list_events("ftjob-b", after=None, limit=100)
    assert (len(api.requests), fake_time.sleeps) == (2, [])


async def test_a_request_queued_for_the_budget_when_a_429_arrives_waits_for_its_hold() -> None:
    api, fake_time = Api(status(429, {"Retry-After": "7"}), ok()), FakeTime()
    # 10 a second: the second request waits ~100 ms (real time) for the budget, and by then the
    # first one's answer has begun the account's hold (on the fake clock).
    client, _ = make_client(api, fake_time, max_requests_per_second=10, max_retries=0)
    first, second = await asyncio.gather(
        list_page(client), client.list_events("ftjob-b", after=None, limit=100), return_exceptions=True
    )
    assert isinstance(first, ApiError) and first.reason == "http_429"
    assert not isinstance(second, BaseException)
    assert (fake_time.sleeps, len(api.requests)) == ([7.0], 2)


# -- the request budget and the rate-limit headers ------------------------------------------


async def test_request_budget_spaces_requests_evenly_across_callers() -> None:
    sent = 0
    granted: list[float] = []
    waits: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        return ok()

    class TimedBudget:
        """The client's budget, noting when each grant came (on the loop's clock, as aiolimiter's):
        times taken later, when a request arrives, would add any preemption to the gaps."""

        def __init__(self, budget: Any) -> None:
            self.budget = budget

        async def acquire(self) -> None:
            await self.budget.acquire()
            granted.append(asyncio.get_running_loop().time())

    http = httpx.AsyncClient(base_url="https://api.test/v1/", transport=httpx.MockTransport(answer))
    gate = RequestGate(budget=TimedBudget(rate_budget(40)), observe_wait=waits.append)
    client = ApiClient(http, gate=gate)
    await asyncio.gather(*(list_page(client) for _ in range(21)))
    assert (sent, len(granted)) == (21, 21)
    # 40 per second, no burst: every grant 25 ms (up to float rounding) after the one before.
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert min(gaps) >= 0.025 - 1e-9, gaps
    # Each caller's wait is observed: the n-th waited at least n x 25 ms.
    assert len(waits) == 21 and sum(waits) >= 0.025 * sum(range(1, 21)) * 0.9


async def test_low_remaining_requests_pause_everything_until_the_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "6m0s"}
    api, fake_time = Api(ok(headers=headers), ok()), FakeTime()
    waits: list[float] = []
    client, _ = make_client(api, fake_time, max_in_flight=4, observe_wait=waits.append)
    with caplog.at_level(logging.INFO, logger="ckpt_exporter.api"):
        await list_page(client)
        assert fake_time.sleeps == []
        await client.list_checkpoints("ftjob-other", after=None, limit=20)  # any job: account-wide
    assert (fake_time.sleeps, waits) == ([360.0], [360.0])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["API rate limit nearly reached (3 request(s) left): pausing requests for 360s"]


async def test_a_request_queued_for_the_budget_when_a_pause_begins_waits_for_it_too() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "5s"}
    api, fake_time = Api(ok(headers=headers), ok()), FakeTime()
    # 10 a second: the second request waits ~100 ms (real time) for its turn, and by then the
    # first one's answer has started a pause (on the fake clock).
    client, _ = make_client(api, fake_time, max_requests_per_second=10)
    await asyncio.gather(list_page(client), list_page(client))
    assert (fake_time.sleeps, len(api.requests)) == ([5.0], 2)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"},  # above 4 in flight
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "later"},
        {"x-ratelimit-remaining-requests": "many", "x-ratelimit-reset-requests": "1s"},
        {"x-ratelimit-remaining-requests": "0"},
    ],
)
async def test_rate_limit_headers_that_do_not_pause(headers: dict[str, str]) -> None:
    api, fake_time = Api(ok(headers=headers)), FakeTime()
    client, _ = make_client(api, fake_time, max_in_flight=4)
    await list_page(client)
    await list_page(client)
    assert fake_time.sleeps == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("1h2m3.5s", 3723.5),
        ("20ms", 0.02),
        ("0s", 0.0),
        ("1.5m", 90.0),
        ("", None),
        ("5", None),
        ("1x", None),
        ("s1", None),
        ("1s ms", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


# -- bad answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (httpx.Response(200, content=b'{"object": "list", "data": [{"id": '), "malformed_json"),
        (httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000), "malformed_json"),
        (httpx.Response(200, content=b"\xff\xfe not utf-8"), "malformed_json"),
        (ok({"object": "list", "data": {"a": 1}, "has_more": False}), "bad_envelope"),
        (ok({"object": "list", "data": [], "has_more": "no"}), "bad_envelope"),
        (ok([1, 2, 3]), "bad_envelope"),
        (ok({"object": "list", "data": [{}] * 21, "has_more": False}), "too_large"),
    ],
    ids=[
        "truncated-json",
        "deep-nesting",
        "not-utf8",
        "data-not-list",
        "has-more-string",
        "not-object",
        "page-over-limit",
    ],
)
async def test_unusable_answers_have_a_bounded_reason(answer: httpx.Response, reason: str) -> None:
    api = Api(answer)
    client, _ = make_client(api)
    with pytest.raises(ApiError) as caught:
        await list_page(client, limit=20)
    assert (caught.value.reason, len(api.requests)) == (reason, 1)


async def test_a_body_over_the_cap_is_refused_without_reading_it_all_or_retrying() -> None:
    big = ok({"object": "list", "data": ["x" * 100] * 100, "has_more": False})
    api = Api(big)
    client, observed = make_client(api, max_response_bytes=1000)
    with pytest.raises(ApiError, match="larger than 1000 bytes") as caught:
        await list_page(client, limit=100)
    assert (caught.value.reason, len(api.requests), observed) == ("too_large", 1, [("checkpoints", "200")])

    async def chunked(request: httpx.Request) -> httpx.Response:
        async def body() -> Any:
            for _ in range(100):
                yield b"x" * 100

        return httpx.Response(200, content=body())  # no Content-Length: the cap counts as it reads

    client, _ = make_client(Api(chunked), max_response_bytes=1000)
    with pytest.raises(ApiError, match="larger than 1000 bytes"):
        await list_page(client)


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.ConnectError("refused"), "transport"),
        (httpx.RemoteProtocolError("reset"), "transport"),
        # httpx-aiohttp maps any aiohttp connection error to ConnectTimeout: the cause decides.
        (httpx.ConnectTimeout("reset"), "transport"),
        # an aiohttp error httpx-aiohttp does not map, and a plain OSError
        (aiohttp.ServerDisconnectedError(), "transport"),
        (ConnectionResetError(104, "Connection reset by peer"), "transport"),
    ],
    ids=[
        "read-timeout",
        "connect-timeout",
        "connect-error",
        "protocol",
        "aiohttp-reset",
        "aiohttp-raw",
        "os",
    ],
)
async def test_transport_failures_are_retried_then_reported(failure: Exception, reason: str) -> None:
    if reason == "transport" and isinstance(failure, httpx.ConnectTimeout):
        failure.__cause__ = aiohttp.ClientOSError(104, "Connection reset by peer")
    api, fake_time = Api(failure), FakeTime()
    client, observed = make_client(api, fake_time)
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert (caught.value.reason, len(api.requests), observed) == (reason, 3, [("checkpoints", "error")] * 3)


async def test_a_programming_error_is_not_disguised_as_a_transport_failure() -> None:
    client, _ = make_client(Api(TypeError("bug")))
    with pytest.raises(TypeError):
        await list_page(client)


async def test_a_response_that_never_completes_times_out() -> None:
    async def dripping(request: httpx.Request) -> httpx.Response:
        async def body() -> Any:
            while True:
                await asyncio.sleep(0.01)
                yield b" "

        return httpx.Response(200, content=body())

    client, _ = make_client(Api(dripping), max_retries=0, attempt_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 1.0


# -- keys ------------------------------------------------------------------------------------


async def test_job_ids_are_url_encoded_in_the_path() -> None:
    api = Api(ok())
    client, _ = make_client(api)
    await client.list_checkpoints("../files?x", after="ftckpt_1", limit=5)
    assert (
        api.requests[0].url.raw_path
        == b"/v1/fine_tuning/jobs/..%2Ffiles%3Fx/checkpoints?after=ftckpt_1&limit=5"
    )


def test_key_file_rotation_is_picked_up_and_every_key_is_redacted(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-rotation-one-0123456789\n")
    keys = KeySource("sk-from-settings-0123456789", key_file)
    assert keys.get() == "sk-rotation-one-0123456789"
    key_file.write_text("sk-rotation-two-9876543210")
    assert keys.get() == "sk-rotation-two-9876543210"
    key_file.unlink()  # a Secret being swapped: keep the last key
    assert keys.get() == "sk-rotation-two-9876543210"
    for key in ("sk-from-settings-0123456789", "sk-rotation-one-0123456789", "sk-rotation-two-9876543210"):
        assert redact(f"x {key} y") == "x [REDACTED] y"


async def test_an_error_message_that_echoes_the_key_is_redacted() -> None:
    KeySource("plainsecret-without-prefix-42")
    echo = status(
        400,
        message="bad header Authorization: Bearer plainsecret-without-prefix-42 "
        "(api-key: 0123456789abcdef0123456789abcdef)",
    )
    client, _ = make_client(Api(echo))
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert "plainsecret" not in str(caught.value) and "0123456789abcdef" not in str(caught.value)
    assert str(caught.value).endswith(": bad header Authorization: Bearer [REDACTED] (api-key: [REDACTED])")


# -- a credential renewed after a 401 (keyless Azure) ------------------------------------------


class Renewals:
    """A Reauthentication that renews by bumping a counter the requests carry as their token."""

    def __init__(self) -> None:
        self.token = 1
        self.refused_tokens: list[str] = []

    def auth(self, request: httpx.Request) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer token-{self.token}"
        return request

    async def renew(self, refused: httpx.Request) -> None:
        self.refused_tokens.append(refused.headers["Authorization"])
        self.token += 1

    def refused(self, status: int, message: str) -> ApiError:
        return ApiError("sign_in", f"refused ({status}): {message}", status=status)


def reauthenticating_client(
    api: Api, renewals: Renewals, **kwargs: Any
) -> tuple[ApiClient, list[tuple[str, str]]]:
    observed: list[tuple[str, str]] = []
    http = httpx.AsyncClient(
        base_url="https://api.test/v1/", transport=httpx.MockTransport(api.handler), auth=renewals.auth
    )
    client = ApiClient(
        http, observe=lambda e, c: observed.append((e, c)), reauthentication=renewals, **kwargs
    )
    return client, observed


async def test_a_401_gets_one_fresh_credential_and_one_more_attempt() -> None:
    api, renewals = Api(status(401), ok()), Renewals()
    client, observed = reauthenticating_client(api, renewals)
    assert (await list_page(client)).has_more is False
    assert [r.headers["Authorization"] for r in api.requests] == ["Bearer token-1", "Bearer token-2"]
    assert renewals.refused_tokens == ["Bearer token-1"]
    assert observed == [("checkpoints", "401"), ("checkpoints", "200")]


async def test_a_fresh_credential_refused_too_is_the_credential_s_failure_with_the_api_s_message() -> None:
    api, renewals = Api(status(401, message="PermissionDenied: lacks the role")), Renewals()
    client, observed = reauthenticating_client(api, renewals, max_retries=2)
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert (caught.value.reason, str(caught.value)) == (
        "sign_in",
        "refused (401): PermissionDenied: lacks the role",
    )
    assert (len(api.requests), observed) == (2, [("checkpoints", "401"), ("checkpoints", "401")])


async def test_a_401_body_is_read_within_the_cap_before_any_renewal() -> None:
    big = httpx.Response(401, content=b'{"error": {"message": "' + b"x" * 5000 + b'"}}')
    api, renewals = Api(big), Renewals()
    client, observed = reauthenticating_client(api, renewals, max_response_bytes=1000)
    with pytest.raises(ApiError) as caught:
        await list_page(client)
    assert (caught.value.reason, len(api.requests), renewals.refused_tokens) == ("too_large", 1, [])
    assert observed == [("checkpoints", "401")]
