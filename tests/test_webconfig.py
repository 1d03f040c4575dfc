"""The web config file: what is refused at start (one line naming the key), what a change while
running does (applied, or refused with a clear ERROR), and the exporter serving HTTPS with basic auth.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import bcrypt
import httpx
import pytest

from ckpt_exporter.fake import FakeApi, FakeApiServer
from ckpt_exporter.webconfig import WebConfig, WebConfigError, load_web_config
from tests.helpers import API_KEY, ExporterProcess, wait_for
from tests.webhelpers import Pki, Served

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


# -- validation ------------------------------------------------------------------------------


TLS = "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"tls_server_config: \xff\n", "web.yml: not UTF-8 text (byte 19)"),
        (b"headers: " + b"[" * 5000 + b"]" * 5000 + b"\n", "web.yml: nested deeper than 32 levels"),
        (
            b"http_server_config: " + b"[" * 40 + b"]" * 40 + b"\n",
            "web.yml: http_server_config is nested deeper",
        ),
    ],
)
def test_a_web_config_that_is_not_utf_8_or_nests_too_deep_is_one_line(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    path = tmp_path / "web.yml"
    path.write_bytes(raw)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config: [1]\n", "tls_server_config: must be a mapping"),
        ("tls_config:\n  cert_file: a\n", "tls_config: unknown key"),
        ("tls_server_config:\n  cert_file: a\n  keyfile: b\n", "tls_server_config.keyfile: unknown key"),
        ("tls_server_config:\n  key_file: {key}\n", "tls_server_config.cert_file: missing"),
        ("tls_server_config:\n  cert_file: {cert}\n", "tls_server_config.key_file: missing"),
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: {key}\n",
            "cannot load /nonexistent.crt",
        ),
        (
            "tls_server_config:\n  cert_file: {key}\n  key_file: {key}\n",
            "tls_server_config.cert_file/key_file",
        ),
        (
            TLS + "  client_auth_type: Maybe\n",
            "'Maybe' is not one of",
        ),
        (
            TLS + "  client_auth_type: RequireAnyClientCert\n",
            "cannot accept a client certificate without verifying it",
        ),
        (
            TLS + "  client_ca_file: {cert}\n",
            "client_ca_file: set without",
        ),
        (
            TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
            "client_ca_file: RequireAndVerifyClientCert needs",
        ),
        (
            TLS + "  min_version: TLS14\n",
            "min_version: 'TLS14'",
        ),
        (
            TLS + "  min_version: TLS13\n  max_version: TLS12\n",
            "min_version: higher than max_version",
        ),
        ("tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "cipher_suites: not supported"),
        ("tls_server_config:\n  cert: '-----BEGIN'\n", "tls_server_config.cert: inline PEM is not supported"),
        ("basic_auth_users:\n  prometheus: hunter2\n", "basic_auth_users.prometheus: not a bcrypt hash"),
        ("basic_auth_users: [a]\n", "basic_auth_users: must be a mapping"),
        ("basic_auth_users:\n  'a:b': '{hash}'\n", "'a:b' is not a valid user name"),
        ("auth_excluded_paths: healthz\n", "auth_excluded_paths: must be a list"),
        ("rate_limit:\n  interval: 1s\n", "rate_limit: not supported"),
        ("http_server_config:\n  headers:\n    Server: x\n", "headers.Server: this header cannot be set"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: always\n", "X-Frame-Options: must be one of"),
        (
            'http_server_config:\n  headers:\n    Content-Security-Policy: "a\\r\\nSet-Cookie: x"\n',
            "headers.Content-Security-Policy: a control character",
        ),
        ("tls_server_config:\n  cert_file: [\n", "invalid YAML at line 3"),
        ("- a\n", "the file: must be a mapping"),
    ],
)
def test_bad_web_configs_name_the_key(tmp_path: Path, pki: Pki, text: str, message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text.format(cert=pki.server.cert, key=pki.server.key, hash=HASH))
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, pki: Pki) -> None:
    for pem in ("server.crt", "server.key"):
        (tmp_path / pem).write_bytes((pki.directory / pem).read_bytes())
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    config = load_web_config(tmp_path / "web.yml")
    assert config.tls is not None and config.tls.cert_file == tmp_path / "server.crt"
    assert (config.scheme, WebConfig().scheme) == ("https", "http")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "ckpt_exporter", *args],
        env={**base, "CKPT_EXPORTER_API_KEY": API_KEY, "CKPT_EXPORTER_JOBS": "ftjob-a", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (None, "cannot read"),
        ("basic_auth_users:\n  prometheus: hunter2\n", "basic_auth_users.prometheus: not a bcrypt hash"),
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
            "/nonexistent.crt",
        ),
    ],
)
def test_a_bad_web_config_exits_2_with_one_line(tmp_path: Path, text: str | None, named: str) -> None:
    path = tmp_path / "web.yml"
    if text is not None:
        path.write_text(text)
    for command in (["check-config"], []):
        done = run_cli(*command, env={"CKPT_EXPORTER_WEB_CONFIG_FILE": str(path)})
        lines = done.stderr.splitlines()
        assert (done.returncode, len(lines)) == (2, 1), done.stderr
        assert lines[0].startswith(
            "ckpt-exporter: invalid setting web_config_file (CKPT_EXPORTER_WEB_CONFIG_FILE): "
        )
        assert named in lines[0] and "Traceback" not in done.stderr


@pytest.mark.integration
def test_the_exporter_serves_https_with_basic_auth(tmp_path: Path, pki: Pki) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        pki.tls_config() + f"basic_auth_users:\n  prometheus: '{HASH}'\nauth_excluded_paths: [/healthz]\n"
    )
    api = FakeApi(api_key=API_KEY)
    api.add_job("ftjob-a")
    api.add_checkpoint("ftjob-a", 10, {"train_loss": 0.25})
    with FakeApiServer(api) as fake:
        exporter = ExporterProcess(
            {
                "CKPT_EXPORTER_API_BASE_URL": fake.base_url,
                "CKPT_EXPORTER_API_KEY": API_KEY,
                "CKPT_EXPORTER_JOBS": "ftjob-a",
                "CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0.5",
                "CKPT_EXPORTER_WEB_CONFIG_FILE": str(web),
            }
        )
        url = f"https://127.0.0.1:{exporter.port}"
        try:

            def scraped() -> bool:
                try:
                    response = httpx.get(
                        url + "/metrics",
                        verify=pki.client_context(),
                        auth=("prometheus", PASSWORD),
                        timeout=5,
                    )
                except httpx.TransportError:
                    return False
                return (
                    'openai_fine_tuning_checkpoint_train_loss{job_id="ftjob-a",step="10"} 0.25'
                    in response.text
                )

            assert wait_for(scraped, 20), exporter.stop()  # the process starts, as in wait_ready
            assert httpx.get(url + "/metrics", verify=pki.client_context(), timeout=5).status_code == 401
            assert httpx.get(url + "/healthz", verify=pki.client_context(), timeout=5).status_code == 200
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)
        finally:
            output = exporter.stop()
        assert exporter.proc.returncode == 0, output
        assert f"serving https://127.0.0.1:{exporter.port}/metrics" in output


# -- a change while running ------------------------------------------------------------------


def web_log(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "ckpt_exporter.webwatch"]


def replace(path: Path, text: str | bytes) -> None:
    """As kubelet updates a mounted ConfigMap: the new file renamed over the old, never half written."""
    new = path.with_suffix(".new")
    new.write_bytes(text) if isinstance(text, bytes) else new.write_text(text)
    os.replace(path.with_suffix(".new"), path)


def status(served: Served, auth: tuple[str, str] | None) -> int:
    return httpx.get(served.url("/healthz"), auth=auth, timeout=5).status_code


def test_a_new_password_hash_is_applied_and_logged(
    serve: type[Served], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ckpt_exporter.webwatch")
    served = serve(f"basic_auth_users:\n  prometheus: '{HASH}'\n  grafana: '{HASH}'\n")
    assert status(served, ("prometheus", PASSWORD)) == 200
    new_hash = bcrypt.hashpw(b"new password", bcrypt.gensalt(4)).decode()
    replace(served.config_path, f"basic_auth_users:\n  prometheus: '{new_hash}'\n  alertmanager: '{HASH}'\n")
    assert wait_for(lambda: status(served, ("prometheus", "new password")) == 200, 10)
    assert status(served, ("prometheus", PASSWORD)) == 401
    assert status(served, ("alertmanager", PASSWORD)) == 200
    assert web_log(caplog) == [
        (
            "INFO",
            f"web config {served.config_path} reloaded: basic auth users: added alertmanager; "
            "removed grafana; new password for prometheus",
        )
    ]
    assert new_hash not in caplog.text and HASH not in caplog.text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("basic_auth_users:\n  prometheus: [\n", "invalid YAML at line 3"),
        ("basic_auth_users:\n  prometheus: hunter2\n", "basic_auth_users.prometheus: not a bcrypt hash"),
        (b"basic_auth_users:\n  prometheus: \xff\n", "not UTF-8 text (byte 32)"),
        ("basic_auth_users: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 32 levels"),
    ],
    ids=["invalid-yaml", "bad-hash", "not-utf-8", "too-deep"],
)
def test_a_change_that_cannot_be_used_keeps_the_previous_config_and_says_why(
    serve: type[Served], caplog: pytest.LogCaptureFixture, text: str | bytes, error: str
) -> None:
    caplog.set_level(logging.INFO, logger="ckpt_exporter.webwatch")
    served = serve(f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    replace(served.config_path, text)
    assert wait_for(lambda: status(served, None) == 401 and web_log(caplog) != [], 10)
    assert status(served, ("prometheus", PASSWORD)) == 200  # the previous config, still in force
    for _ in range(3):
        status(served, None)
    [(level, message)] = web_log(caplog)  # once per change, not once per request
    assert (level, message.split(": ", 1)[0]) == (
        "ERROR",
        "web config changed but cannot be used, keeping the previous one",
    )
    assert (error in message and "hunter2" not in message) or error.endswith("hash")


def test_turning_tls_on_while_running_takes_a_restart(
    serve: type[Served], pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ckpt_exporter.webwatch")
    served = serve(f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    replace(served.config_path, pki.tls_config())
    assert wait_for(lambda: status(served, None) == 401 and web_log(caplog) != [], 10)
    assert web_log(caplog) == [
        (
            "ERROR",
            f"web config {served.config_path} now asks for https instead of http: that takes a restart; "
            "keeping the previous one",
        )
    ]
    assert status(served, ("prometheus", PASSWORD)) == 200 and status(served, None) == 401
