"""Settings: sources and their precedence, and one-line errors (exit 2) that name the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt_exporter.settings import Settings, SettingsError, load_settings

KEY = "sk-settings-test-SECRET"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CKPT_EXPORTER_", "OPENAI_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert (s.api_base_url, s.poll_interval_seconds, s.listen_address, s.listen_port) == (
        "https://api.openai.com/v1",
        60.0,
        "0.0.0.0",
        9842,
    )
    assert (s.page_size, s.max_concurrency, s.full_read_every_polls, s.log_level, s.log_format) == (
        20,
        16,
        10,
        "INFO",
        "text",
    )


def test_precedence_cli_over_env_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("poll_interval_seconds: 5\npage_size: 7\nmax_concurrency: 3\njobs: [ftjob-file]\n")
    monkeypatch.setenv("CKPT_EXPORTER_POLL_INTERVAL_SECONDS", "6")
    monkeypatch.setenv("CKPT_EXPORTER_PAGE_SIZE", "8")
    s = load_settings({"poll_interval_seconds": "0.5"}, config)
    assert (s.poll_interval_seconds, s.page_size, s.max_concurrency, s.jobs) == (0.5, 8, 3, ["ftjob-file"])
    assert s.request_timeout_seconds == 30.0  # default


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("jobs: [ftjob-x]\n")
    monkeypatch.setenv("CKPT_EXPORTER_CONFIG_FILE", str(config))
    assert load_settings().jobs == ["ftjob-x"]


def test_openai_fallbacks_and_prefixed_names_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://proxy.example/v1/")
    s = load_settings()
    assert (s.read_api_key(), s.api_base_url) == ("sk-openai", "https://proxy.example/v1")
    monkeypatch.setenv("CKPT_EXPORTER_API_KEY", "sk-mine")
    monkeypatch.setenv("CKPT_EXPORTER_API_BASE_URL", "http://127.0.0.1:1/v1")
    s = load_settings()
    assert (s.read_api_key(), s.api_base_url) == ("sk-mine", "http://127.0.0.1:1/v1")


def test_unprefixed_environment_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_BASE_URL", "http://elsewhere")
    monkeypatch.setenv("JOBS", "ftjob-x")
    s = load_settings()
    assert (s.api_base_url, s.jobs) == ("https://api.openai.com/v1", [])


@pytest.mark.parametrize(
    ("value", "jobs"),
    [
        ("ftjob-a,ftjob-b", ["ftjob-a", "ftjob-b"]),
        (" ftjob-a , ftjob-b ,", ["ftjob-a", "ftjob-b"]),
        ('["ftjob-a", "ftjob-b", "ftjob-a"]', ["ftjob-a", "ftjob-b"]),
    ],
)
def test_jobs_comma_separated_or_json(monkeypatch: pytest.MonkeyPatch, value: str, jobs: list[str]) -> None:
    monkeypatch.setenv("CKPT_EXPORTER_JOBS", value)
    assert load_settings().jobs == jobs


def test_key_file_is_read_and_reread(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-one\n")
    s = load_settings({"api_key_file": str(key_file)})
    assert s.read_api_key() == "sk-one"
    key_file.write_text("sk-two")
    assert s.read_api_key() == "sk-two"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EXPORTER_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "ckpt_exporter", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


GOOD = {"CKPT_EXPORTER_API_KEY": KEY, "CKPT_EXPORTER_JOBS": "ftjob-abc"}


def test_check_config_prints_settings_with_the_key_masked() -> None:
    done = run_cli("check-config", env=GOOD)
    assert (done.returncode, done.stderr) == (0, "")
    shown = json.loads(done.stdout)
    assert (shown["api_key"], shown["jobs"], shown["listen_port"]) == ("********", ["ftjob-abc"], 9842)
    assert KEY not in done.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "soon"}, "poll_interval_seconds"),
        ({"CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "0"}, "poll_interval_seconds"),
        ({"CKPT_EXPORTER_POLL_INTERVAL_SECONDS": "-5"}, "poll_interval_seconds"),
        ({"CKPT_EXPORTER_PAGE_SIZE": "-1"}, "page_size"),
        ({"CKPT_EXPORTER_LOG_LEVEL": "LOUD"}, "log_level"),
        ({"CKPT_EXPORTER_LOG_FORMAT": "xml"}, "log_format"),
        ({"CKPT_EXPORTER_API_BASE_URL": "ftp://api.openai.com/v1"}, "api_base_url"),
        ({"CKPT_EXPORTER_API_BASE_URL": "api.openai.com"}, "api_base_url"),
        ({"CKPT_EXPORTER_LISTEN_PORT": "70000"}, "listen_port"),
        ({"CKPT_EXPORTER_MAX_CONCURRENCY": "0"}, "max_concurrency"),
        ({"CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "0"}, "max_requests_per_second"),
        ({"CKPT_EXPORTER_MAX_REQUESTS_PER_SECOND": "inf"}, "max_requests_per_second"),
        ({"CKPT_EXPORTER_REQUEST_TIMEOUT_SECONDS": "0"}, "request_timeout_seconds"),
        ({"CKPT_EXPORTER_JOBS": "../files"}, "jobs"),
        ({"CKPT_EXPORTER_JOBS": "a/b"}, "jobs"),
        ({"CKPT_EXPORTER_JOBS": "x?y"}, "jobs"),
        ({"CKPT_EXPORTER_JOBS": "[not json"}, "jobs"),
        ({"CKPT_EXPORTER_API_KEY": ""}, "api_key"),
        ({"CKPT_EXPORTER_API_KEY_FILE": "/nonexistent/key"}, "api_key_file"),
    ],
)
def test_bad_settings_exit_2_with_one_line_naming_the_setting(env: dict[str, str], named: str) -> None:
    for command in (["check-config"], []):
        done = run_cli(*command, env={**GOOD, **env})
        assert done.returncode == 2, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("ckpt-exporter: ") and named in lines[0], lines[0]
        assert "Traceback" not in done.stderr and KEY not in done.stderr


def test_missing_key_and_missing_jobs() -> None:
    done = run_cli(env={"CKPT_EXPORTER_JOBS": "ftjob-a"})
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)
    assert "api_key" in done.stderr
    done = run_cli(env={"CKPT_EXPORTER_API_KEY": KEY})
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)
    assert "jobs" in done.stderr


def test_cli_flags_and_bad_config_file(tmp_path: Path) -> None:
    done = run_cli("check-config", "--poll-interval-seconds", "2.5", "--jobs", "ftjob-1,ftjob-2", env=GOOD)
    shown = json.loads(done.stdout)
    assert (shown["poll_interval_seconds"], shown["jobs"]) == (2.5, ["ftjob-1", "ftjob-2"])
    done = run_cli("check-config", "--config", str(tmp_path / "missing.yaml"), env=GOOD)
    assert done.returncode == 2 and "missing.yaml" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs: [a\n")
    done = run_cli("check-config", "--config", str(bad), env=GOOD)
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)
    bad.write_text("poll_intervall_seconds: 5\n")
    done = run_cli("check-config", "--config", str(bad), env=GOOD)
    assert done.returncode == 2 and "poll_intervall_seconds: unknown setting" in done.stderr


def test_settings_error_is_raised_not_printed() -> None:
    with pytest.raises(SettingsError, match=r"^invalid setting page_size \(CKPT_EXPORTER_PAGE_SIZE\)"):
        load_settings({"page_size": "0"})


def test_example_config_names_every_setting_and_is_valid() -> None:
    from tests.helpers import REPO

    example = REPO / "config" / "example.yaml"
    text = example.read_text()
    for name in Settings.model_fields:
        assert f"\n{name}:" in text or f"\n# {name}:" in text, name
    assert load_settings({"api_key": KEY}, example).jobs == ["ftjob-abc123", "ftjob-def456"]
