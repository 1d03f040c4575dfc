"""Keyless Azure, the setup around the sign-in: the client-secret and workload-identity routes
over TLS, the settings, the demo, the address forms and headers, several accounts, redaction.

As in test_entra.py: azure-identity itself, the fake identity endpoint and the fake API on
loopback, the exporter as a real process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ckpt_exporter.entra import TOKEN_FAILURE_REASONS
from ckpt_exporter.fake import FakeApi, FakeApiServer
from ckpt_exporter.fake.identity import FakeIdentity, FakeIdentityServer
from ckpt_exporter.logging_setup import forget_secret, redact, register_secret
from tests.helpers import (
    FOUNDRY_PROJECT,
    KEYLESS_JOBS,
    DrainedExporterProcess,
    answers,
    exported_steps,
    free_port,
    job_up,
    keyless_env,
    parse_samples,
    token_failures,
    wait_for,
)

pytestmark = pytest.mark.integration

JWT = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")


@pytest.mark.parametrize("route", ["client_secret", "workload_identity"])
def test_the_msal_routes_over_tls_on_loopback(
    route: str, tmp_path: Path, foundry: tuple[FakeApi, FakeApiServer]
) -> None:
    """AZURE_AUTHORITY_HOST must be https: a TLS fake authority, trusted through SSL_CERT_FILE."""
    fake = FakeIdentity(lifetime=20.0)
    api, api_server = foundry
    api.add_checkpoint(KEYLESS_JOBS[0], 10, {"train_loss": 0.125})
    with FakeIdentityServer(fake, tls=True) as server:
        api.token_check = fake.token_checker()
        env = {
            "CKPT_EXPORTER_API_FLAVOR": "azure",
            "CKPT_EXPORTER_AZURE_AUTH": "entra",
            "CKPT_EXPORTER_API_BASE_URL": api_server.base_url,
            "CKPT_EXPORTER_JOBS": KEYLESS_JOBS[0],
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
                lambda: (
                    answers(exporter) and exported_steps(exporter.metrics(), KEYLESS_JOBS[0]) == {10: 0.125}
                ),
                30,
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
    demo_jobs = ("ftjob-demo1", "ftjob-demo2", "ftjob-demo3")  # supervised, with losses

    def all_up(text: str) -> bool:
        up = job_up(text)
        return set(demo_jobs) <= set(up) and set(up.values()) == {1.0}

    def scraped() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.TransportError:
            return ""

    try:
        assert wait_for(lambda: all_up(scraped()), 30)
        text = scraped()
        assert all(len(exported_steps(text, job_id)) >= 2 for job_id in demo_jobs)
        assert token_failures(text) == dict.fromkeys(
            TOKEN_FAILURE_REASONS, 0.0
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


@pytest.mark.parametrize(
    ("prefix", "api_version"), [("/openai", "2024-10-21"), ("/openai/v1", None), (FOUNDRY_PROJECT, None)]
)
def test_keyless_on_every_address_form_sends_bearer_and_no_key(
    prefix: str, api_version: str | None, identity: tuple[FakeIdentity, FakeIdentityServer]
) -> None:
    fake_identity, identity_server = identity
    api = FakeApi(token_check=fake_identity.token_checker())
    api.add_job(KEYLESS_JOBS[0], newest_first=False)
    api.add_checkpoint(KEYLESS_JOBS[0], 10, {"train_loss": 0.75})
    with FakeApiServer(api, prefix=prefix) as server:
        env = keyless_env(identity_server, server, CKPT_EXPORTER_JOBS=KEYLESS_JOBS[0])
        exporter = DrainedExporterProcess(env)
        try:
            assert wait_for(
                lambda: answers(exporter) and job_up(exporter.metrics()) == {KEYLESS_JOBS[0]: 1.0}, 30
            )
            assert exported_steps(exporter.metrics(), KEYLESS_JOBS[0]) == {10: 0.75}
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
    keyless_api.add_checkpoint(KEYLESS_JOBS[0], 10, {"train_loss": 0.5})
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
            f"     api_base_url: '{keyless_server.base_url}', jobs: [{KEYLESS_JOBS[0]}]}}\n"
        )
        env = keyless_env(identity_server, keyless_server, CKPT_EXPORTER_CONFIG_FILE=str(config))
        for name in ("CKPT_EXPORTER_API_FLAVOR", "CKPT_EXPORTER_AZURE_AUTH", "CKPT_EXPORTER_API_BASE_URL"):
            del env[name]
        del env["CKPT_EXPORTER_JOBS"]
        exporter = DrainedExporterProcess(env)
        try:
            wanted = {KEYLESS_JOBS[0]: 1.0, "ftjob-keyed": 1.0}
            assert wait_for(lambda: answers(exporter) and job_up(exporter.metrics()) == wanted, 30)
            text = exporter.metrics()
            assert exported_steps(text, KEYLESS_JOBS[0]) == {10: 0.5}
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
