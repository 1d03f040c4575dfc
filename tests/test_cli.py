"""The command line as operators use it, on the real process: flags before or after the command,
no abbreviations, a mistake in one line with exit 2, the exporter-toolkit's names, and listen
addresses that check-config and the exporter itself accept or refuse alike."""

from __future__ import annotations

import ctypes
import json
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import DrainedExporterProcess, free_port, run_cli, wait_for

KEY = "sk-cli-test-0123456789SECRET"
# A key and a job: enough for check-config and for `run` to start (its API is a closed port).
RUNNABLE = {
    "CKPT_EXPORTER_API_KEY": KEY,
    "CKPT_EXPORTER_JOBS": "ftjob-abc",
    "CKPT_EXPORTER_API_BASE_URL": "http://127.0.0.1:1/v1",
}


def serves(url: str, timeout: float = 20) -> bool:
    def answered() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    return wait_for(answered, timeout, interval=0.1)


@pytest.mark.integration
def test_a_flag_before_the_command_means_what_it_means_after() -> None:
    port = free_port()
    # The harness sets CKPT_EXPORTER_LISTEN_PORT to exporter.port: the flag must win over it.
    exporter = DrainedExporterProcess(
        {}, ["--listen-port", str(port), "demo", "--poll-interval-seconds", "1"]
    )
    try:
        assert serves(f"http://127.0.0.1:{port}/metrics")
        # The server answers before the first poll has read the jobs: wait for that read.
        assert wait_for(
            lambda: "openai_fine_tuning_job_info" in httpx.get(f"http://127.0.0.1:{port}/metrics").text, 20
        )
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{exporter.port}/metrics")
    finally:
        exporter.stop()
    before = run_cli(
        "--jobs", "ftjob-a,ftjob-b", "--poll-interval-seconds", "7", "check-config", env=RUNNABLE
    )
    after = run_cli("check-config", "--jobs", "ftjob-a,ftjob-b", "--poll-interval-seconds", "7", env=RUNNABLE)
    assert (before.returncode, before.stderr) == (0, "")
    assert json.loads(before.stdout) == json.loads(after.stdout)
    shown = json.loads(before.stdout)
    assert (shown["jobs"], shown["poll_interval_seconds"]) == (["ftjob-a", "ftjob-b"], 7.0)


@pytest.mark.integration
def test_the_exporter_toolkit_listen_address_and_log_flags() -> None:
    ipv4, ipv6 = free_port(), free_port()
    exporter = DrainedExporterProcess(
        {},
        [
            f"--web.listen-address=127.0.0.1:{ipv4}",
            "--web.listen-address",
            f"[::1]:{ipv6}",
            "--log.level",
            "debug",
            "--log.format=logfmt",
            "demo",
        ],
    )
    try:
        assert serves(f"http://127.0.0.1:{ipv4}/metrics")
        assert serves(f"http://[::1]:{ipv6}/metrics")
        # The HTTP server logs each request at DEBUG: only seen with --log.level debug.
        request = re.compile(
            r'level=DEBUG logger=ckpt_exporter\.\w+ msg="127\.0\.0\.1 \\"GET /metrics HTTP/1\.1\\" 200'
        )
        assert wait_for(lambda: request.search(exporter.output_so_far()) is not None, 10), (
            exporter.output_so_far()
        )
        with pytest.raises(httpx.ConnectError):  # listen_address and listen_port are replaced
            httpx.get(f"http://127.0.0.1:{exporter.port}/metrics")
    finally:
        output = exporter.stop()
    for line in output.splitlines():
        if line.startswith("time="):
            assert " level=" in line and " logger=" in line and " msg=" in line, line


@pytest.mark.integration
def test_every_address_serves_ipv4_and_ipv6() -> None:
    port = free_port()
    exporter = DrainedExporterProcess({}, ["demo", f"--web.listen-address=:{port}"])
    try:
        assert serves(f"http://127.0.0.1:{port}/healthz")
        assert serves(f"http://[::1]:{port}/healthz")
    finally:
        exporter.stop()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--poll", "5"],
            "unknown flag --poll (flags are never abbreviated: did you mean --poll-interval-seconds?)",
        ),
        (
            ["--api-key", KEY],
            "--api-key: the key is never taken on the command line (it would show in ps); "
            "set CKPT_EXPORTER_API_KEY or give --api-key-file",
        ),
        (
            [f"--api-key={KEY}", "check-config"],
            "--api-key: the key is never taken on the command line (it would show in ps); "
            "set CKPT_EXPORTER_API_KEY or give --api-key-file",
        ),
        (["--jobz", "ftjob-a", "check-config"], "unknown flag --jobz (did you mean --jobs?)"),
        (["check-config", "--log.levle", "debug"], "unknown flag --log.levle (did you mean --log.level?)"),
        (["dmeo"], "unknown command 'dmeo' (did you mean demo?)"),
        (["check-config", "run"], "unexpected argument 'run' after the command check-config"),
        (["--demo-jobs", "2", "run"], "--demo-jobs is a flag of the demo command only"),
        (["demo", "--demo-jobs", "many"], "argument --demo-jobs: invalid int value: 'many'"),
        (["check-config", "--jobs"], "argument --jobs: expected one argument"),
        (["-x"], "unknown flag -x"),
    ],
)
def test_a_mistake_on_the_command_line_is_one_line_and_exit_2(args: list[str], line: str) -> None:
    done = run_cli(*args, env=RUNNABLE)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"ckpt-exporter: {line}\n")


def test_help_gives_every_flag_a_sentence() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for flag in (
        "--poll-interval-seconds VALUE Seconds between polls (down to 0.1).",
        "--web-listen-address VALUE, --web.listen-address VALUE Addresses to serve on",
        "--web-config-file VALUE, --web.config.file VALUE TLS and basic auth for /metrics",
        "--web-telemetry-path VALUE, --web.telemetry-path VALUE The path the metrics are served at.",
        "--log-level VALUE, --log.level VALUE The least severe log lines written: debug, info, warn, error.",
        "--log-format VALUE, --log.format VALUE How log lines are written: text, logfmt or json.",
        "--demo-jobs N The demo's number of simulated jobs (default 3).",
    ):
        assert flag in text, flag
    assert "--api-key " not in text  # the key has no flag


def test_an_unknown_variable_is_named_with_the_closest_setting() -> None:
    done = run_cli("check-config", env={**RUNNABLE, "CKPT_EXPORTER_POLL_INTERVAL": "5"})
    assert done.returncode == 0
    assert done.stderr == (
        "ckpt-exporter: warning: environment variable CKPT_EXPORTER_POLL_INTERVAL names no setting and is "
        "ignored; did you mean CKPT_EXPORTER_POLL_INTERVAL_SECONDS?\n"
    )
    assert json.loads(done.stdout)["poll_interval_seconds"] == 60.0


@pytest.mark.integration
def test_the_running_exporter_logs_an_unknown_variable() -> None:
    exporter = DrainedExporterProcess({**RUNNABLE, "CKPT_EXPORTER_POLL_INTERVAL": "5"})
    try:
        assert serves(exporter.url + "/healthz")
    finally:
        output = exporter.stop()
    assert (
        "WARNING ckpt_exporter.cli: environment variable CKPT_EXPORTER_POLL_INTERVAL names no setting and is "
        "ignored; did you mean CKPT_EXPORTER_POLL_INTERVAL_SECONDS?\n" in output
    ), output


def _without_file_permission_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that root too
    obeys a file's mode (as a container's non-root user does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        (b"sk-unreadable-0123456789\n", 0o000, "cannot read {path} (Permission denied)"),
        (b"\xff\xfe sk-latin1-\xe9\n", 0o600, "{path} is not UTF-8 text (byte 0)"),
    ],
    ids=["unreadable", "not-utf8"],
)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_key_file_that_cannot_be_read_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes, mode: int, problem: str, command: str
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_bytes(content)
    key_file.chmod(mode)
    preexec: Callable[[], None] | None = _without_file_permission_override if os.geteuid() == 0 else None
    done = run_cli(
        command,
        env={"CKPT_EXPORTER_API_KEY_FILE": str(key_file), "CKPT_EXPORTER_JOBS": "ftjob-a"},
        preexec_fn=preexec,
    )
    expected = f"ckpt-exporter: api_key_file: {problem.format(path=key_file)}\n"
    assert (done.returncode, done.stdout, done.stderr) == (2, "", expected)


@pytest.mark.parametrize("depth", [40, 20000])
def test_a_settings_file_nested_deep_is_one_line_and_exit_2(tmp_path: Path, depth: int) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("discovery_metadata: " + "{a: " * depth + "1" + "}" * depth + "\n")
    done = run_cli("check-config", "--config", str(config), env=RUNNABLE)
    key = "discovery_metadata is " if depth == 40 else ""
    assert (done.returncode, done.stderr) == (
        2,
        f"ckpt-exporter: config file {config}: {key}nested deeper than 32 levels\n",
    )


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# (flags with {port}, the URL that answers when they are accepted, or the line when refused)
LISTEN_CASES = [
    (["--listen-address", "127.0.0.1", "--listen-port", "{port}"], "http://127.0.0.1:{port}/healthz"),
    (["--web.listen-address", "127.0.0.1:{port}"], "http://127.0.0.1:{port}/healthz"),
    (["--web.listen-address", "localhost:{port}"], "http://127.0.0.1:{port}/healthz"),
    (["--web.listen-address", ":{port}"], "http://127.0.0.1:{port}/healthz"),
    (["--web.listen-address", "[::1]:{port}"], "http://[::1]:{port}/healthz"),
    (
        ["--listen-address", "127.0.0.1:{port}"],
        "invalid setting listen_address (--listen-address): '127.0.0.1:{port}' has a port: give the "
        "host alone and the port in listen_port, or use web_listen_address "
        "(--web.listen-address=127.0.0.1:{port})",
    ),
    (
        ["--listen-address", "no-such-host.invalid"],
        "listen_address: cannot listen on no-such-host.invalid:{port}: cannot resolve "
        "'no-such-host.invalid' ({resolve_error})",
    ),
    (
        ["--web.listen-address", "192.0.2.1:{port}"],  # TEST-NET-1: never an address of this machine
        "web_listen_address: cannot listen on 192.0.2.1:{port}: 192.0.2.1 is not an address of this "
        "machine (Cannot assign requested address)",
    ),
    (
        ["--web.listen-address", "::1:{port}"],
        "invalid setting web_listen_address (--web-listen-address): '::1:{port}': put an IPv6 address "
        "in brackets, as in [::1]:9842",
    ),
]


def _resolve_error() -> str:
    try:
        socket.getaddrinfo("no-such-host.invalid", 80, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return str(exc.strerror)
    raise AssertionError("no-such-host.invalid resolved")


@pytest.mark.integration
@pytest.mark.parametrize(("flags", "outcome"), LISTEN_CASES)
def test_check_config_and_start_agree_on_listen_addresses(flags: list[str], outcome: str) -> None:
    if "[::1]" in outcome and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    port = free_port()
    args = [flag.format(port=port) for flag in flags]
    env = {**RUNNABLE, "CKPT_EXPORTER_LISTEN_ADDRESS": "127.0.0.1", "CKPT_EXPORTER_LISTEN_PORT": str(port)}
    checked = run_cli("check-config", *args, env=env)
    exporter = DrainedExporterProcess(env, args)
    try:
        if outcome.startswith("http"):
            assert (checked.returncode, checked.stderr) == (0, "")
            assert serves(outcome.format(port=port)), exporter.output_so_far()
            return
        line = outcome.format(port=port, resolve_error=_resolve_error())
        assert (checked.returncode, checked.stderr) == (2, f"ckpt-exporter: {line}\n")
        assert exporter.proc.wait(timeout=20) == 2
        assert exporter.stop() == f"ckpt-exporter: {line}\n"
    finally:
        exporter.stop()


@pytest.mark.integration
def test_a_port_in_use_is_named_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(f"--web.listen-address=127.0.0.1:{port}", env=RUNNABLE)
    assert done.returncode == 1
    assert done.stderr.endswith(f"ckpt-exporter: cannot listen on 127.0.0.1:{port}: Address already in use\n")


@pytest.mark.integration
def test_the_telemetry_path_flag_moves_the_metrics() -> None:
    exporter = DrainedExporterProcess({}, ["demo", "--web.telemetry-path", "/custom/metrics"])
    try:
        assert serves(exporter.url + "/custom/metrics")
        assert wait_for(
            lambda: "openai_fine_tuning_job_info" in httpx.get(exporter.url + "/custom/metrics").text, 20
        )
        assert httpx.get(exporter.url + "/metrics").status_code == 404
    finally:
        exporter.stop()
