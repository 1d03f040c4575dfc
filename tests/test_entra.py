"""Keyless Azure: the exporter signs in through azure-identity itself, against loopback servers.

The identity endpoint is the fake of ckpt_exporter/fake/identity.py (App Service managed identity:
IDENTITY_ENDPOINT / IDENTITY_HEADER; the OAuth client-credentials route over TLS for client
secrets and workload identity); the API is the fake Foundry project endpoint, which accepts only
unexpired tokens that identity issued. Nothing is mocked: the exporter is a real process.
"""

from __future__ import annotations

import re
import time

import jwt
import pytest

from ckpt_exporter.entra import TOKEN_FAILURE_REASONS
from ckpt_exporter.fake import FakeApi, FakeApiServer, Fault
from ckpt_exporter.fake.identity import FakeIdentity, FakeIdentityServer
from tests.helpers import (
    KEYLESS_JOBS,
    DrainedExporterProcess,
    answers,
    exported_steps,
    job_up,
    keyless_env,
    parse_samples,
    sign_in_errors,
    token_failures,
    wait_for,
)

pytestmark = pytest.mark.integration

JWT = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")


def test_tokens_are_renewed_as_they_expire_and_every_checkpoint_is_exported(
    identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    fake_identity, identity_server = identity
    api, api_server = foundry
    exporter = DrainedExporterProcess(
        keyless_env(identity_server, api_server, CKPT_EXPORTER_LOG_LEVEL="DEBUG")
    )
    try:
        exporter.wait_ready()
        expected: dict[str, dict[int, float]] = {job_id: {} for job_id in KEYLESS_JOBS}
        # 44 s of training: two renewals of the 20-second tokens, a checkpoint per job every 2 s.
        deadline = time.monotonic() + 44
        step = 0
        while time.monotonic() < deadline:
            step += 10
            for job_id in KEYLESS_JOBS:
                loss = round(2.0 / step, 6)
                api.add_checkpoint(job_id, step, {"train_loss": loss})
                expected[job_id][step] = loss
            time.sleep(2)
        assert wait_for(
            lambda: all(exported_steps(exporter.metrics(), j) == expected[j] for j in KEYLESS_JOBS), 15
        ), exporter.output_so_far()[-3000:]
        text = exporter.metrics()
        assert job_up(text) == {job_id: 1.0 for job_id in KEYLESS_JOBS}
        assert token_failures(text) == dict.fromkeys(TOKEN_FAILURE_REASONS, 0.0)
        issued = fake_identity.issued_tokens()
        assert len(issued) >= 3, issued  # the first token and at least two renewals
        # At most one refused request per renewal, and none left standing: every poll since succeeded.
        refused = [r for r in api.requests if r.at >= _expiry(_bearer(r.headers))]
        assert len(refused) <= len(issued) - 1, (len(refused), len(issued))
        print(f"{len(issued)} tokens, {len(refused)} refused of {len(api.requests)} requests")
        assert parse_samples(text, "ckpt_exporter_api_errors_total") == {}
        assert JWT.search(text) is None
    finally:
        output = exporter.stop()
    assert "DEBUG" in output
    tokens_seen = {_bearer(r.headers) for r in api.requests}
    assert len(tokens_seen) >= 3
    for token in tokens_seen:
        assert token not in output
    assert JWT.search(output) is None
    assert fake_identity.identity_header not in output


def _bearer(headers: dict[str, str]) -> str:
    return headers.get("Authorization", "").removeprefix("Bearer ")


def _expiry(token: str) -> float:
    """The token's exp claim: the fake API refuses it from then on."""
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_a_token_the_api_finds_expired_is_renewed_and_the_request_retried(
    identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    """The API's clock 6 s ahead: it refuses each token while azure-identity still holds it valid."""
    fake_identity, identity_server = identity
    api, api_server = foundry
    api.token_check = fake_identity.token_checker(clock_skew=6.0)
    job_id = KEYLESS_JOBS[0]
    exporter = DrainedExporterProcess(keyless_env(identity_server, api_server, CKPT_EXPORTER_JOBS=job_id))
    try:
        exporter.wait_ready()
        expected = {}
        for step in range(10, 360, 10):  # 35 s: two tokens refused early
            api.add_checkpoint(job_id, step, {"train_loss": step / 1000})
            expected[step] = step / 1000
            time.sleep(1)
        assert wait_for(lambda: exported_steps(exporter.metrics(), job_id) == expected, 10)
        text = exporter.metrics()
        assert job_up(text) == {job_id: 1.0}
        assert parse_samples(text, "ckpt_exporter_api_errors_total") == {}  # no failed poll
        assert token_failures(text)["api_rejected"] == 0.0
    finally:
        exporter.stop()
    refused = [r for r in api.requests if r.at + 6.0 >= _expiry(_bearer(r.headers))]
    stale = {_bearer(r.headers) for r in refused}
    assert len(stale) >= 2, len(stale)
    # Only the requests already on their way when the first refusal came back: one poll of a job
    # sends at most three at once (checkpoints, events, the job's status).
    assert len(refused) <= 3 * len(stale), (len(refused), len(stale))
    for token in stale:  # once refused, a token is never sent again after its renewal
        last_refused = max(r.at for r in refused if _bearer(r.headers) == token)
        assert all(r.at <= last_refused for r in api.requests if _bearer(r.headers) == token)


def test_an_identity_endpoint_down_then_up(
    identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    fake_identity, identity_server = identity
    api, api_server = foundry
    for job_id in KEYLESS_JOBS:
        api.add_checkpoint(job_id, 10, {"train_loss": 0.5})
    fake_identity.fail(500)
    exporter = DrainedExporterProcess(keyless_env(identity_server, api_server))
    try:
        assert wait_for(
            lambda: answers(exporter) and job_up(exporter.metrics()) == dict.fromkeys(KEYLESS_JOBS, 0.0), 30
        )
        assert wait_for(lambda: token_failures(exporter.metrics())["endpoint_error"] >= 2, 30)
        lines = sign_in_errors(exporter.output_so_far())
        assert len(lines) == 1, lines
        assert "no Entra ID token (endpoint_error): the identity endpoint answered HTTP 500" in lines[0]
        assert api.request_counts == {}  # nothing was sent without a token
        fake_identity.recover()
        back = time.monotonic()
        assert wait_for(lambda: job_up(exporter.metrics()) == dict.fromkeys(KEYLESS_JOBS, 1.0), 20)
        recovered_in = time.monotonic() - back
        assert recovered_in < 20  # the bound (wait_for above already gave up at 20 s)
        print(f"recovered {recovered_in:.1f}s after the identity endpoint came back")
        assert exported_steps(exporter.metrics(), KEYLESS_JOBS[0]) == {10: 0.5}
        assert "account default: signed in with Entra ID again" in exporter.output_so_far()
    finally:
        output = exporter.stop()
    assert "Traceback" not in output


def test_a_wrong_client_id_is_one_clear_line(
    identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    _, identity_server = identity
    _, api_server = foundry
    exporter = DrainedExporterProcess(
        keyless_env(identity_server, api_server, CKPT_EXPORTER_AZURE_CLIENT_ID="no-such-identity")
    )
    try:
        assert wait_for(lambda: answers(exporter) and token_failures(exporter.metrics())["rejected"] >= 1, 30)
        assert job_up(exporter.metrics()) == dict.fromkeys(KEYLESS_JOBS, 0.0)
        lines = sign_in_errors(exporter.output_so_far())
        assert len(lines) == 1, lines
        assert (
            "no Entra ID token (rejected): the identity endpoint refused the request (HTTP 400)" in lines[0]
        )
    finally:
        output = exporter.stop()
    assert "Traceback" not in output


def test_a_user_assigned_identity_signs_in(
    identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    fake_identity, identity_server = identity
    api, api_server = foundry
    api.add_checkpoint(KEYLESS_JOBS[0], 10, {"train_loss": 0.25})
    exporter = DrainedExporterProcess(
        keyless_env(identity_server, api_server, CKPT_EXPORTER_AZURE_CLIENT_ID="uami-client-id")
    )
    try:
        assert wait_for(
            lambda: answers(exporter) and exported_steps(exporter.metrics(), KEYLESS_JOBS[0]) == {10: 0.25},
            30,
        )
        assert {token.client_id for token in fake_identity.issued_tokens()} == {"uami-client-id"}
    finally:
        exporter.stop()


def test_the_api_refusing_fresh_tokens_names_the_role(
    identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    """A missing role: the identity signs in, the API answers 401 to every token."""
    _, identity_server = identity
    api, api_server = foundry
    api.token_check = lambda token: False
    exporter = DrainedExporterProcess(keyless_env(identity_server, api_server))
    try:
        assert wait_for(
            lambda: answers(exporter) and token_failures(exporter.metrics())["api_rejected"] >= 2, 30
        )
        assert job_up(exporter.metrics()) == dict.fromkeys(KEYLESS_JOBS, 0.0)
        lines = sign_in_errors(exporter.output_so_far())
        assert len(lines) == 1, lines
        assert "Cognitive Services OpenAI Contributor" in lines[0]
    finally:
        exporter.stop()


def test_no_identity_at_all_is_unavailable(foundry: tuple[FakeApi, FakeApiServer]) -> None:
    """Only the environment credential allowed (AZURE_TOKEN_CREDENTIALS), and no secret set."""
    _, api_server = foundry
    env = keyless_env(FakeIdentityServer(FakeIdentity()), api_server)  # never started: unused
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        del env[name]
    env["AZURE_TOKEN_CREDENTIALS"] = "EnvironmentCredential"
    exporter = DrainedExporterProcess(env)
    try:
        assert wait_for(
            lambda: answers(exporter) and token_failures(exporter.metrics())["unavailable"] >= 2, 30
        )
        assert job_up(exporter.metrics()) == dict.fromkeys(KEYLESS_JOBS, 0.0)
        lines = sign_in_errors(exporter.output_so_far())
        assert len(lines) == 1, lines
        assert (
            "no Entra ID token (unavailable): no identity to sign in with: EnvironmentCredential: "
            in lines[0]
        )
    finally:
        output = exporter.stop()
    assert "Traceback" not in output


def test_a_hung_identity_endpoint_is_a_timeout_and_metrics_keep_answering(
    identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    fake_identity, identity_server = identity
    _, api_server = foundry
    fake_identity.hang(30.0)
    exporter = DrainedExporterProcess(
        keyless_env(identity_server, api_server, CKPT_EXPORTER_REQUEST_TIMEOUT_SECONDS="1")
    )
    try:
        assert wait_for(lambda: answers(exporter) and token_failures(exporter.metrics())["timeout"] >= 1, 30)
        assert job_up(exporter.metrics()) == dict.fromkeys(KEYLESS_JOBS, 0.0)
        lines = sign_in_errors(exporter.output_so_far())
        assert lines[0].endswith("no Entra ID token (timeout): no token within 2s; tried again every 2s"), (
            lines
        )
        fake_identity.recover()
        assert wait_for(lambda: job_up(exporter.metrics()) == dict.fromkeys(KEYLESS_JOBS, 1.0), 40)
    finally:
        exporter.stop()


def test_a_403_to_a_token_is_one_line_about_the_identity_not_a_key(
    identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    """A 403 (a network rule, a role without this action) is not retried with a new token."""
    _, identity_server = identity
    api, api_server = foundry
    api.inject(None, Fault.http(403), times=None)
    exporter = DrainedExporterProcess(keyless_env(identity_server, api_server))
    try:
        assert wait_for(
            lambda: answers(exporter) and job_up(exporter.metrics()) == dict.fromkeys(KEYLESS_JOBS, 0.0), 30
        )
        assert wait_for(lambda: "(HTTP 403)" in exporter.output_so_far(), 10)
    finally:
        output = exporter.stop()
    lines = [line for line in output.splitlines() if "(HTTP 403)" in line]
    assert len(lines) == 1, lines
    assert "account default: the API refused the Entra ID token's access (HTTP 403)" in lines[0]
    assert "key" not in lines[0]
