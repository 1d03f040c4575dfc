"""Settings: sources and their precedence, and one-line errors (exit 2) that name the setting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ckpt_exporter.settings import Settings, SettingsError, load_settings
from ckpt_exporter.settings_sources import environment_names, unknown_environment
from tests.helpers import REPO, run_cli

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
    assert (done.returncode, done.stderr) == (
        2,
        f"ckpt-exporter: unknown setting poll_intervall_seconds in config file {bad} "
        "(did you mean poll_interval_seconds?)\n",
    )


def test_settings_error_is_raised_not_printed() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"page_size": "0"})
    assert str(raised.value) == (
        "invalid setting page_size (--page-size): Input should be greater than or equal to 1, got '0'"
    )


def test_example_config_names_every_setting_and_is_valid() -> None:
    example = REPO / "config" / "example.yaml"
    text = example.read_text()
    for name in Settings.model_fields:
        assert f"\n{name}:" in text or f"\n# {name}:" in text, name
    assert load_settings({"api_key": KEY}, example).jobs == ["ftjob-abc123", "ftjob-def456"]


def test_openai_variables_rank_below_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-shell")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://shell.example/v1")
    config = tmp_path / "c.yaml"
    config.write_text("api_base_url: https://file.example/v1\napi_key: sk-from-the-file\n")
    s = load_settings(config_file=config)
    assert (s.read_api_key(), s.api_base_url) == ("sk-from-the-file", "https://file.example/v1")
    config.write_text("jobs: [ftjob-a]\n")  # nothing of ours: OpenAI's variables apply
    s = load_settings(config_file=config)
    assert (s.read_api_key(), s.api_base_url) == ("sk-from-the-shell", "https://shell.example/v1")


def test_a_bad_value_is_reported_with_the_source_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("poll_interval_seconds: -5\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config_file=config)
    assert str(raised.value) == (
        f"invalid setting poll_interval_seconds (config file {config}): "
        "Input should be greater than or equal to 0.1, got -5"
    )
    monkeypatch.setenv("CKPT_EXPORTER_POLL_INTERVAL_SECONDS", "-6")
    with pytest.raises(SettingsError) as raised:
        load_settings(config_file=config)
    assert str(raised.value) == (
        "invalid setting poll_interval_seconds (CKPT_EXPORTER_POLL_INTERVAL_SECONDS): "
        "Input should be greater than or equal to 0.1, got '-6'"
    )
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://shell.example")
    with pytest.raises(SettingsError) as raised:
        load_settings({"poll_interval_seconds": 5})
    assert str(raised.value) == (
        "invalid setting api_base_url (OPENAI_BASE_URL): must be an http:// or https:// URL, "
        "got 'ftp://shell.example'"
    )


def test_unknown_keys_in_an_account_get_the_closest_setting(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("accounts:\n  - name: research\n    api_key_fil: /k\n    jbos: [ftjob-a]\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config_file=config)
    assert str(raised.value) == (
        f"unknown setting accounts[0].api_key_fil in config file {config} (did you mean api_key_file?); "
        f"unknown setting accounts[0].jbos in config file {config} (did you mean jobs?)"
    )


@pytest.mark.parametrize("depth", [33, 5000])
def test_a_config_file_nested_deep_is_one_line(tmp_path: Path, depth: int) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("jobs: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(config_file=config)
    key = "jobs is " if depth == 33 else ""  # 5000 deep stops the YAML parser itself, before any key
    assert str(raised.value) == f"config file {config}: {key}nested deeper than 32 levels"


def test_json_in_the_environment_nested_deep_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPT_EXPORTER_ACCOUNTS", "[" * 5000 + "]" * 5000)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == "CKPT_EXPORTER_ACCOUNTS: nested deeper than 32 levels"


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"\xff\xfesk-key", "is not UTF-8 text (byte 0)"), (b"\n", "is empty")],
)
def test_a_key_file_that_cannot_be_decoded_is_named(tmp_path: Path, content: bytes, problem: str) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_bytes(content)
    settings = load_settings({"api_key_file": str(key_file), "jobs": "ftjob-a"})
    with pytest.raises(SettingsError) as raised:
        settings.check_runnable()
    assert str(raised.value) == f"api_key_file: {key_file} {problem}"


@pytest.mark.parametrize(
    ("environ", "warnings"),
    [
        (
            {"CKPT_EXPORTER_POLL_INTERVAL": "5"},
            [
                "environment variable CKPT_EXPORTER_POLL_INTERVAL names no setting and is ignored; "
                "did you mean CKPT_EXPORTER_POLL_INTERVAL_SECONDS?"
            ],
        ),
        (
            {"CKPT_EXPORTER_XYZZY": "1"},
            ["environment variable CKPT_EXPORTER_XYZZY names no setting and is ignored"],
        ),
        # Kubernetes' service links for a Service named ckpt-exporter are not ours.
        (
            {
                "CKPT_EXPORTER_SERVICE_HOST": "10.0.0.7",
                "CKPT_EXPORTER_SERVICE_PORT": "9842",
                "CKPT_EXPORTER_SERVICE_PORT_HTTP_METRICS": "9842",
                "CKPT_EXPORTER_PORT": "tcp://10.0.0.7:9842",
                "CKPT_EXPORTER_PORT_9842_TCP_ADDR": "10.0.0.7",
            },
            [],
        ),
        # ... but a name shaped like one, without its Service, is a typo.
        (
            {"CKPT_EXPORTER_LISTENING_PORT": "9842"},
            [
                "environment variable CKPT_EXPORTER_LISTENING_PORT names no setting and is ignored; "
                "did you mean CKPT_EXPORTER_LISTEN_PORT?"
            ],
        ),
        ({"CKPT_EXPORTER_CONFIG_FILE": "/c.yaml", "ckpt_exporter_jobs": "a", "OPENAI_API_KEY": "k"}, []),
    ],
)
def test_unknown_environment_variables_are_named_with_the_closest(
    environ: dict[str, str], warnings: list[str]
) -> None:
    assert unknown_environment(environ, environment_names(Settings.model_fields)) == warnings


@pytest.mark.parametrize(
    ("values", "error"),
    [
        (
            {"listen_address": "127.0.0.1:9842"},
            "invalid setting listen_address (--listen-address): '127.0.0.1:9842' has a port: give the "
            "host alone and the port in listen_port, or use web_listen_address "
            "(--web.listen-address=127.0.0.1:9842)",
        ),
        (
            {"listen_address": "[::1]"},
            "invalid setting listen_address (--listen-address): '[::1]': brackets belong only around an "
            "IPv6 address followed by a port",
        ),
        (
            {"web_listen_address": ["::1:9842"]},
            "invalid setting web_listen_address (--web-listen-address): '::1:9842': put an IPv6 address "
            "in brackets, as in [::1]:9842",
        ),
        (
            {"web_listen_address": ["127.0.0.1"]},
            "invalid setting web_listen_address (--web-listen-address): '127.0.0.1' has no port: "
            "write host:port, [IPv6]:port or :port",
        ),
        (
            {"web_listen_address": ["127.0.0.1:0"]},
            "invalid setting web_listen_address (--web-listen-address): '127.0.0.1:0': "
            "the port must be a number from 1 to 65535",
        ),
        (
            {"web_telemetry_path": "/readyz"},
            "invalid setting web_telemetry_path (--web-telemetry-path): /readyz is the server's own; "
            "choose another path, got '/readyz'",
        ),
    ],
)
def test_listen_addresses_are_checked(values: dict[str, object], error: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(values)
    assert str(raised.value) == error


def test_listen_addresses_in_the_exporter_toolkit_form() -> None:
    s = load_settings({"web_listen_address": ["[::1]:9842", ":9843", "localhost:9844,127.0.0.1:9845"]})
    assert s.web_listen_address == ["[::1]:9842", ":9843", "localhost:9844", "127.0.0.1:9845"]
    assert [(a.host, a.port) for a in s.listen_addresses()] == [
        ("::1", 9842),
        ("", 9843),
        ("localhost", 9844),
        ("127.0.0.1", 9845),
    ]
    s = load_settings({"listen_address": "::1", "listen_port": 9900})
    assert [(a.host, a.port) for a in s.listen_addresses()] == [("::1", 9900)]


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("warn", "WARNING"), ("Error", "ERROR")])
def test_log_levels_by_the_exporter_toolkit_names(given: str, level: str) -> None:
    assert load_settings({"log_level": given}).log_level == level


def test_every_setting_has_a_sentence_for_help() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and field.description[0].isupper(), name
        assert field.description.endswith("."), name
