"""Keyless Azure: the exporter signs in through azure-identity itself, against loopback servers.

The identity endpoint is the fake of ckpt_exporter/fake/identity.py (App Service managed identity:
IDENTITY_ENDPOINT / IDENTITY_HEADER; the OAuth client-credentials route over TLS for client
secrets and workload identity); the API is the fake Foundry project endpoint, which accepts only
unexpired tokens that identity issued. Nothing is mocked: the exporter is a real process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer
from ckpt_exporter.fake.identity import FakeIdentity, FakeIdentityServer
from ckpt_exporter.logging_setup import forget_secret, redact, register_secret
from tests.helpers import DrainedExporterProcess, free_port, parse_samples, wait_for

pytestmark = pytest.mark.integration

PROJECT = "/api/projects/demo-project/openai/v1"  # Foundry's project endpoint, under the resource
JOBS = ("ftjob-entra1", "ftjob-entra2")
JWT = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")


@pytest.fixture
def identity() -> Iterator[tuple[FakeIdentity, FakeIdentityServer]]:
    fake = FakeIdentity(lifetime=20.0, client_ids=frozenset({"uami-client-id"}))
    with FakeIdentityServer(fake) as server:
        yield fake, server


@pytest.fixture
def foundry(identity: tuple[FakeIdentity, FakeIdentityServer]) -> Iterator[tuple[FakeApi, FakeApiServer]]:
    api = FakeApi(token_check=identity[0].token_checker())
    for job_id in JOBS:
        api.add_job(job_id, newest_first=False)  # Azure lists the oldest first
    with FakeApiServer(api, prefix=PROJECT) as server:
        yield api, server


def keyless_env(
    identity_server: FakeIdentityServer, api_server: FakeApiServer, **extra: str
) -> dict[str, str]:
    return {
        "CKPT_EXPORTER_API_FLAVOR": "azure",
        "CKPT_EXPORTER_AZURE_AUTH": "entra",
        "CKPT_EXPORTER_API_BASE_URL": api_server.base_url,
        "CKPT_EXPORTER_JOBS": ",".join(JOBS),
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
        expected: dict[str, dict[int, float]] = {job_id: {} for job_id in JOBS}
        # 44 s of training: two renewals of the 20-second tokens, a checkpoint per job every 2 s.
        deadline = time.monotonic() + 44
        step = 0
        while time.monotonic() < deadline:
            step += 10
            for job_id in JOBS:
                loss = round(2.0 / step, 6)
                api.add_checkpoint(job_id, step, {"train_loss": loss})
                expected[job_id][step] = loss
            time.sleep(2)
        assert wait_for(
            lambda: all(exported_steps(exporter.metrics(), j) == expected[j] for j in JOBS), 15
        ), exporter.output_so_far()[-3000:]
        text = exporter.metrics()
        assert job_up(text) == {job_id: 1.0 for job_id in JOBS}
        assert token_failures(text) == dict.fromkeys(
            ("unavailable", "unreachable", "endpoint_error", "rejected", "timeout", "api_rejected"), 0.0
        )
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
    job_id = JOBS[0]
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
    for job_id in JOBS:
        api.add_checkpoint(job_id, 10, {"train_loss": 0.5})
    fake_identity.fail(500)
    exporter = DrainedExporterProcess(keyless_env(identity_server, api_server))
    try:
        assert wait_for(
            lambda: _answers(exporter) and job_up(exporter.metrics()) == dict.fromkeys(JOBS, 0.0), 30
        )
        assert wait_for(lambda: token_failures(exporter.metrics())["endpoint_error"] >= 2, 30)
        lines = sign_in_errors(exporter.output_so_far())
        assert len(lines) == 1, lines
        assert "no Entra ID token (endpoint_error): the identity endpoint answered HTTP 500" in lines[0]
        assert api.request_counts == {}  # nothing was sent without a token
        fake_identity.recover()
        back = time.monotonic()
        assert wait_for(lambda: job_up(exporter.metrics()) == dict.fromkeys(JOBS, 1.0), 20)
        recovered_in = time.monotonic() - back
        assert recovered_in < 20  # the issue's bound (wait_for above already gave up at 20 s)
        print(f"recovered {recovered_in:.1f}s after the identity endpoint came back")
        assert exported_steps(exporter.metrics(), JOBS[0]) == {10: 0.5}
        assert "account default: signed in with Entra ID again" in exporter.output_so_far()
    finally:
        output = exporter.stop()
    assert "Traceback" not in output


def sign_in_errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR " in line and "Entra ID" in line]


def _answers(exporter: DrainedExporterProcess) -> bool:
    try:
        return exporter.get("/metrics").status_code == 200
    except Exception:
        return False


def test_a_wrong_client_id_is_one_clear_line(
    identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    _, identity_server = identity
    _, api_server = foundry
    exporter = DrainedExporterProcess(
        keyless_env(identity_server, api_server, CKPT_EXPORTER_AZURE_CLIENT_ID="no-such-identity")
    )
    try:
        assert wait_for(
            lambda: _answers(exporter) and token_failures(exporter.metrics())["rejected"] >= 1, 30
        )
        assert job_up(exporter.metrics()) == dict.fromkeys(JOBS, 0.0)
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
    api.add_checkpoint(JOBS[0], 10, {"train_loss": 0.25})
    exporter = DrainedExporterProcess(
        keyless_env(identity_server, api_server, CKPT_EXPORTER_AZURE_CLIENT_ID="uami-client-id")
    )
    try:
        assert wait_for(
            lambda: _answers(exporter) and exported_steps(exporter.metrics(), JOBS[0]) == {10: 0.25}, 30
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
            lambda: _answers(exporter) and token_failures(exporter.metrics())["api_rejected"] >= 2, 30
        )
        assert job_up(exporter.metrics()) == dict.fromkeys(JOBS, 0.0)
        lines = sign_in_errors(exporter.output_so_far())
        assert len(lines) == 1, lines
        assert "Cognitive Services OpenAI Contributor" in lines[0]
    finally:
        exporter.stop()


@pytest.mark.parametrize("route", ["client_secret", "workload_identity"])
def test_the_msal_routes_over_tls_on_loopback(
    route: str, tmp_path: Path, foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    """AZURE_AUTHORITY_HOST must be https: a TLS fake authority, trusted through SSL_CERT_FILE."""
    fake = FakeIdentity(lifetime=20.0)
    api, api_server = foundry
    api.add_checkpoint(JOBS[0], 10, {"train_loss": 0.125})
    with FakeIdentityServer(fake, tls=True) as server:
        api.token_check = fake.token_checker()
        env = {
            "CKPT_EXPORTER_API_FLAVOR": "azure",
            "CKPT_EXPORTER_AZURE_AUTH": "entra",
            "CKPT_EXPORTER_API_BASE_URL": api_server.base_url,
            "CKPT_EXPORTER_JOBS": JOBS[0],
            "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "1",
            "AZURE_AUTHORITY_HOST": server.authority_host,
            "AZURE_TENANT_ID": "tenant-1",
            "AZURE_CLIENT_ID": "app-client-id",
            "SSL_CERT_FILE": str(server.ca_file),
        }
        if route == "client_secret":
            fake.client_secrets["app-client-id"] = "client-secret-value-1234"
            env["AZURE_CLIENT_SECRET"] = "client-secret-value-1234"
        else:
            assertion = tmp_path / "azure-identity-token"
            assertion.write_text("federated-service-account-token")
            fake.federated_tokens["app-client-id"] = "federated-service-account-token"
            env["AZURE_FEDERATED_TOKEN_FILE"] = str(assertion)
        exporter = DrainedExporterProcess(env)
        try:
            assert wait_for(
                lambda: _answers(exporter) and exported_steps(exporter.metrics(), JOBS[0]) == {10: 0.125}, 30
            ), exporter.output_so_far()[-2000:]
            assert {token.route for token in fake.issued_tokens()} == {route}
        finally:
            output = exporter.stop()
        assert "client-secret-value-1234" not in output


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "ckpt_exporter", "check-config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keyless_needs_no_key_anywhere() -> None:
    done = check_config(
        {
            "CKPT_EXPORTER_API_FLAVOR": "azure",
            "CKPT_EXPORTER_AZURE_AUTH": "entra",
            "CKPT_EXPORTER_AZURE_CLIENT_ID": "uami-client-id",
            "CKPT_EXPORTER_API_BASE_URL": "https://res.services.ai.azure.com/api/projects/p/openai/v1",
            "CKPT_EXPORTER_JOBS": "ftjob-a",
        }
    )
    assert (done.returncode, done.stderr) == (0, "")
    shown = json.loads(done.stdout)
    assert (shown["azure_auth"], shown["azure_client_id"], shown["api_key"]) == (
        "entra",
        "uami-client-id",
        None,
    )
    assert shown["azure_token_scope"] == "https://cognitiveservices.azure.com/.default"


def test_each_account_chooses_its_sign_in(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "accounts:\n"
        "  - {name: keyed, api_flavor: azure, jobs: [ftjob-a],\n"
        "     api_base_url: 'https://a.openai.azure.com/openai'}\n"
        "  - {name: keyless, api_flavor: azure, azure_auth: entra, jobs: [ftjob-b],\n"
        "     api_base_url: 'https://b.services.ai.azure.com/api/projects/p/openai/v1'}\n"
    )
    done = check_config({"CKPT_EXPORTER_CONFIG_FILE": str(config)})
    assert done.returncode == 2
    assert done.stderr == (
        "ckpt-exporter: accounts[keyed].api_key: no API key; set CKPT_EXPORTER_API_KEY "
        "(or OPENAI_API_KEY), or api_key_file / CKPT_EXPORTER_API_KEY_FILE\n"
    )
    key = tmp_path / "api-key"
    key.write_text("azure-key-0123456789")
    config.write_text(
        config.read_text().replace("jobs: [ftjob-a]", f"jobs: [ftjob-a], api_key_file: '{key}'")
    )
    done = check_config({"CKPT_EXPORTER_CONFIG_FILE": str(config)})
    assert (done.returncode, done.stderr) == (0, "")
    shown = json.loads(done.stdout)
    assert [a["azure_auth"] for a in shown["accounts"]] == ["key", "entra"]


def test_entra_is_only_for_azure() -> None:
    done = check_config({"CKPT_EXPORTER_AZURE_AUTH": "entra", "CKPT_EXPORTER_JOBS": "ftjob-a"})
    assert done.returncode == 2
    assert (
        done.stderr
        == "ckpt-exporter: invalid setting azure_auth: entra signs in to Azure; set api_flavor: azure\n"
    )


def test_the_keyless_demo_runs_on_one_machine() -> None:
    port = free_port()
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_", "IDENTITY_"))
    }
    demo = subprocess.Popen(
        [sys.executable, "-m", "ckpt_exporter", "demo", "--api-flavor", "azure", "--listen-port", str(port)],
        env={**clean, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    demo_jobs = {"ftjob-demo1": 1.0, "ftjob-demo2": 1.0, "ftjob-demo3": 1.0}

    def scraped() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.TransportError:
            return ""

    try:
        assert wait_for(lambda: job_up(scraped()) == demo_jobs, 30)
        text = scraped()
        assert all(len(exported_steps(text, job_id)) >= 2 for job_id in demo_jobs)
        assert token_failures(text) == dict.fromkeys(
            ("unavailable", "unreachable", "endpoint_error", "rejected", "timeout", "api_rejected"), 0.0
        )  # created for keyless accounts only: the demo signed in with Entra ID
    finally:
        demo.terminate()
        output, _ = demo.communicate(timeout=15)
    assert "account default: signed in with Microsoft Entra ID" in output
    assert "Keyless: Microsoft Entra ID tokens from a simulated managed identity." in output


def test_organization_and_project_with_azure_are_one_warning() -> None:
    api = FakeApi(api_key="azure-key-0123456789")
    api.add_job("ftjob-a")
    with FakeApiServer(api, prefix="/openai") as server:
        exporter = DrainedExporterProcess(
            {
                "CKPT_EXPORTER_API_FLAVOR": "azure",
                "CKPT_EXPORTER_API_BASE_URL": server.base_url,
                "CKPT_EXPORTER_API_KEY": "azure-key-0123456789",
                "CKPT_EXPORTER_ORGANIZATION": "org-x",
                "CKPT_EXPORTER_PROJECT": "proj-x",
                "CKPT_EXPORTER_JOBS": "ftjob-a",
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "1",
            }
        )
        try:
            exporter.wait_ready()
            assert wait_for(lambda: api.count("checkpoints", "ftjob-a") >= 3, 20)
        finally:
            output = exporter.stop()
    warnings = [line for line in output.splitlines() if "not sent to Azure" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith(
        "WARNING ckpt_exporter.app: account default: organization and project are OpenAI's headers; "
        "they are not sent to Azure"
    )
    assert all(
        "OpenAI-Organization" not in r.headers and "OpenAI-Project" not in r.headers for r in api.requests
    )
    assert {r.headers["api-key"] for r in api.requests} == {"azure-key-0123456789"}


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
            lambda: _answers(exporter) and token_failures(exporter.metrics())["unavailable"] >= 2, 30
        )
        assert job_up(exporter.metrics()) == dict.fromkeys(JOBS, 0.0)
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
        assert wait_for(lambda: _answers(exporter) and token_failures(exporter.metrics())["timeout"] >= 1, 30)
        assert job_up(exporter.metrics()) == dict.fromkeys(JOBS, 0.0)
        lines = sign_in_errors(exporter.output_so_far())
        assert lines[0].endswith("no Entra ID token (timeout): no token within 2s; tried again every 2s"), (
            lines
        )
        fake_identity.recover()
        assert wait_for(lambda: job_up(exporter.metrics()) == dict.fromkeys(JOBS, 1.0), 40)
    finally:
        exporter.stop()


@pytest.mark.parametrize(
    ("prefix", "api_version"), [("/openai", "2024-10-21"), ("/openai/v1", None), (PROJECT, None)]
)
def test_keyless_on_every_address_form_sends_bearer_and_no_key(
    prefix: str, api_version: str | None, identity: tuple[FakeIdentity, FakeIdentityServer]
) -> None:
    fake_identity, identity_server = identity
    api = FakeApi(token_check=fake_identity.token_checker())
    api.add_job(JOBS[0], newest_first=False)
    api.add_checkpoint(JOBS[0], 10, {"train_loss": 0.75})
    with FakeApiServer(api, prefix=prefix) as server:
        env = keyless_env(identity_server, server, CKPT_EXPORTER_JOBS=JOBS[0])
        exporter = DrainedExporterProcess(env)
        try:
            assert wait_for(lambda: _answers(exporter) and job_up(exporter.metrics()) == {JOBS[0]: 1.0}, 30)
            assert exported_steps(exporter.metrics(), JOBS[0]) == {10: 0.75}
        finally:
            exporter.stop()
    assert {r.path.startswith(prefix + "/fine_tuning/jobs/") for r in api.requests} == {True}
    assert {r.query.get("api-version") for r in api.requests} == {api_version}
    assert {"api-key" in r.headers for r in api.requests} == {False}
    assert {r.headers["Authorization"].startswith("Bearer eyJ") for r in api.requests} == {True}


def test_a_keyed_and_a_keyless_account_in_one_exporter(
    tmp_path: Path, identity: tuple[FakeIdentity, FakeIdentityServer], foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    _, identity_server = identity
    keyless_api, keyless_server = foundry
    keyless_api.add_checkpoint(JOBS[0], 10, {"train_loss": 0.5})
    keyed_api = FakeApi(api_key="azure-key-0123456789")
    keyed_api.add_job("ftjob-keyed")
    keyed_api.add_checkpoint("ftjob-keyed", 20, {"train_loss": 0.25})
    key_file = tmp_path / "api-key"
    key_file.write_text("azure-key-0123456789")
    with FakeApiServer(keyed_api, prefix="/openai") as keyed_server:
        config = tmp_path / "config.yaml"
        config.write_text(
            "accounts:\n"
            f"  - {{name: keyed, api_flavor: azure, api_base_url: '{keyed_server.base_url}',\n"
            f"     api_key_file: '{key_file}', jobs: [ftjob-keyed]}}\n"
            "  - {name: keyless, api_flavor: azure, azure_auth: entra,\n"
            f"     api_base_url: '{keyless_server.base_url}', jobs: [{JOBS[0]}]}}\n"
        )
        env = keyless_env(identity_server, keyless_server, CKPT_EXPORTER_CONFIG_FILE=str(config))
        for name in ("CKPT_EXPORTER_API_FLAVOR", "CKPT_EXPORTER_AZURE_AUTH", "CKPT_EXPORTER_API_BASE_URL"):
            del env[name]
        del env["CKPT_EXPORTER_JOBS"]
        exporter = DrainedExporterProcess(env)
        try:
            wanted = {JOBS[0]: 1.0, "ftjob-keyed": 1.0}
            assert wait_for(lambda: _answers(exporter) and job_up(exporter.metrics()) == wanted, 30)
            text = exporter.metrics()
            assert exported_steps(text, JOBS[0]) == {10: 0.5}
            assert exported_steps(text, "ftjob-keyed") == {20: 0.25}
            accounts = {dict(labels)["account"] for (_, labels) in parse_samples(text, "ckpt_exporter_token")}
            assert accounts == {"keyless"}  # token failures are counted for the keyless account only
        finally:
            exporter.stop()
    assert {r.headers.get("api-key") for r in keyed_api.requests} == {"azure-key-0123456789"}
    assert {"Authorization" in r.headers for r in keyed_api.requests} == {False}
    assert {"api-key" in r.headers for r in keyless_api.requests} == {False}


def test_tokens_are_redacted_whoever_logs_them() -> None:
    """A registered token goes whole; any JSON Web Token does too; an expired one is forgotten."""
    fake = FakeIdentity()
    token, _ = fake.issue("https://cognitiveservices.azure.com", "app_service", None)
    assert redact(f"sent Authorization={token}!") == "sent Authorization=[REDACTED]!"
    assert redact(f"event {{'access_token': '{token}'}}") == "event {'access_token': '[REDACTED]'}"
    opaque = "opaque-token-value-0123456789"
    register_secret(opaque)
    assert redact(f"x {opaque} y") == "x [REDACTED] y"
    forget_secret(opaque)
    assert redact(f"x {opaque} y") == f"x {opaque} y"
