"""The command line: `ckpt-exporter [flags] [run|demo|check-config] [flags]`.

Every setting (except the key, which never belongs on a command line) has a flag named after it:
--poll-interval-seconds 5, --jobs ftjob-a,ftjob-b, ... and the exporter-toolkit's names work too
(--web.listen-address, --web.config.file, --web.telemetry-path, --log.level, --log.format). Flags
mean the same before and after the command, are never abbreviated, and beat the environment, which
beats the config file. A mistake on the command line is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ckpt_exporter import __version__
from ckpt_exporter.logging_setup import redact, register_secret, setup_logging
from ckpt_exporter.settings import (
    Settings,
    SettingsError,
    cli_field_names,
    load_settings,
    settings_file,
)
from ckpt_exporter.settings_sources import (
    ENV_PREFIX,
    closest,
    environment_names,
    unknown_environment,
)

EXIT_CONFIG = 2
COMMANDS = {
    "run": "run the exporter (the default)",
    "demo": "run against a built-in simulated API: no key, no network",
    "check-config": "print the effective settings (key masked) and exit; 2 if the exporter would refuse them",
}
# The Prometheus exporter-toolkit's flag names, beside ours: {setting: toolkit flag}.
TOOLKIT_FLAGS = {
    "web_listen_address": "--web.listen-address",
    "web_config_file": "--web.config.file",
    "web_telemetry_path": "--web.telemetry-path",
    "log_level": "--log.level",
    "log_format": "--log.format",
}
DEMO_FLAGS = ("--demo-jobs", "--demo-checkpoint-seconds")
DEMO_JOBS = 3
DEMO_CHECKPOINT_SECONDS = 5.0

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A mistake on the command line; the message is one line naming it."""


class _Parser(argparse.ArgumentParser):
    """argparse, with one line for an error instead of the usage, and a table of its options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arity: dict[str, bool] = {}  # each option string: whether it takes a value
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        for option in action.option_strings:
            self.arity[option] = action.nargs != 0
        return action

    def error(self, message: str) -> NoReturn:  # argparse prints the usage and exits: we want one line
        raise UsageError(message)


def build_parser() -> _Parser:
    parser = _Parser(
        prog="ckpt-exporter",
        usage="%(prog)s [flags] [run|demo|check-config] [flags]",
        description="Prometheus exporter for OpenAI fine-tuning checkpoints. Flags may come before or "
        "after the command; each setting also reads CKPT_EXPORTER_<SETTING>.",
        allow_abbrev=False,
    )
    commands = ", ".join(f"{name}: {meaning}" for name, meaning in COMMANDS.items())
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="command", help=commands)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="The YAML settings file (or CKPT_EXPORTER_CONFIG_FILE)."
    )
    for name in cli_field_names():
        field = Settings.model_fields[name]
        flags = ["--" + name.replace("_", "-")] + ([TOOLKIT_FLAGS[name]] if name in TOOLKIT_FLAGS else [])
        default = field.get_default(call_default_factory=True)
        parser.add_argument(
            *flags,
            dest=name,
            metavar="VALUE",
            default=None,
            action="append" if name == "web_listen_address" else "store",
            help=f"{field.description} ({ENV_PREFIX}{name.upper()}; default: {default!r})".replace("%", "%%"),
        )
    parser.add_argument(
        "--demo-jobs",
        type=int,
        metavar="N",
        help=f"The demo's number of simulated jobs (default {DEMO_JOBS}).",
    )
    parser.add_argument(
        "--demo-checkpoint-seconds",
        type=float,
        metavar="SECONDS",
        help=f"In the demo, each job gains a checkpoint this often (default {DEMO_CHECKPOINT_SECONDS:g}).",
    )
    return parser


def _unknown_flag(name: str, known: Sequence[str]) -> str:
    if name == "--api-key":
        return (
            "--api-key: the key is never taken on the command line (it would show in ps); "
            "set CKPT_EXPORTER_API_KEY or give --api-key-file"
        )
    longer = [flag for flag in known if flag.startswith(name) and len(name) > 2]
    if longer:  # an abbreviation: say what it is not taken for
        return f"unknown flag {name} (flags are never abbreviated: did you mean {' or '.join(longer[:3])}?)"
    match = closest(name, known)
    return f"unknown flag {name}" + (f" (did you mean {match}?)" if match else "")


def _misuse(argv: Sequence[str], arity: dict[str, bool]) -> str | None:
    """The first unknown flag, unknown command or stray argument, named, before argparse guesses."""
    command = None
    rest = iter(argv)
    options_end = False
    for token in rest:
        if token == "--" and not options_end:
            options_end = True
            continue
        if not options_end and token.startswith("-") and not re.match(r"^-\d", token):
            name = token.split("=", 1)[0]
            if name not in arity:
                return _unknown_flag(name, sorted(arity))
            if arity[name] and "=" not in token:
                next(rest, None)  # its value, whatever it looks like
            continue
        if command is None:
            if token not in COMMANDS:
                match = closest(token, COMMANDS)
                return f"unknown command {token!r}" + (f" (did you mean {match}?)" if match else "")
            command = token
        else:
            return f"unexpected argument {token!r} after the command {command}"
    return None


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """The flags and the command; UsageError with one line for any mistake."""
    parser = build_parser()
    problem = _misuse(argv, parser.arity)
    if problem is not None:
        raise UsageError(problem)
    args = parser.parse_intermixed_args(argv)
    args.command = args.command or "run"
    if args.command != "demo":
        for flag in DEMO_FLAGS:
            if getattr(args, flag[2:].replace("-", "_")) is not None:
                raise UsageError(f"{flag} is a flag of the demo command only")
    # Their defaults once we know they were not given elsewhere than to the demo.
    args.demo_jobs = DEMO_JOBS if args.demo_jobs is None else args.demo_jobs
    if args.demo_checkpoint_seconds is None:
        args.demo_checkpoint_seconds = DEMO_CHECKPOINT_SECONDS
    return args


def _settings_values(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in cli_field_names() if getattr(args, name, None) is not None}


def _environment_warnings() -> list[str]:
    return unknown_environment(os.environ, environment_names(Settings.model_fields))


def _start_logging(settings: Settings, secrets: Sequence[str | None] = ()) -> None:
    setup_logging(settings.log_level, settings.log_format, secrets=secrets)
    for warning in _environment_warnings():
        log.warning("%s", warning)


def main(argv: list[str] | None = None) -> int:
    # A settings error quotes the value it rejects: never the key, even one pasted in the wrong place.
    for name in ("CKPT_EXPORTER_API_KEY", "OPENAI_API_KEY"):
        register_secret(os.environ.get(name))
    try:
        args = parse_command_line(sys.argv[1:] if argv is None else argv)
        if args.command == "demo":
            return _demo(args)
        settings = load_settings(_settings_values(args), args.config)
        settings.check_runnable()
    except (UsageError, SettingsError) as exc:
        print(f"ckpt-exporter: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        for warning in _environment_warnings():
            print(f"ckpt-exporter: warning: {warning}", file=sys.stderr)
        print(json.dumps(settings.masked(), indent=2))
        return 0
    _start_logging(settings, secrets=[settings.read_api_key()])
    return _run(
        settings,
        reload_settings=lambda: load_settings(_settings_values(args), args.config),
        config=args.config or settings_file(),
    )


def _run(
    settings: Settings,
    on_ready: Callable[[str], None] | None = None,
    reload_settings: Callable[[], Settings] | None = None,
    config: Path | None = None,
) -> int:
    from ckpt_exporter.app import serve

    try:
        return asyncio.run(serve(settings, on_ready, reload_settings, config))
    except OSError as exc:  # the port is taken, or the address went away since the check
        print(f"ckpt-exporter: {exc.strerror or exc}", file=sys.stderr)
        return 1


_DEMO_PROJECT_PATH = "/api/projects/demo-project/openai/v1"


def _demo_identity() -> Any:
    """A simulated managed-identity endpoint (60-second tokens), exported to this process."""
    from ckpt_exporter.fake.identity import FakeIdentity, FakeIdentityServer

    server = FakeIdentityServer(FakeIdentity(lifetime=60.0)).start()
    server.export_environment()
    return server.identity


def _demo(args: argparse.Namespace) -> int:
    from ckpt_exporter.fake import FakeApi, FakeApiServer, SimulatedTraining

    # --api-flavor azure: keyless Foundry, signed in through azure-identity at a simulated
    # managed-identity endpoint; the fake project endpoint accepts only the tokens it issued.
    identity = _demo_identity() if args.api_flavor == "azure" else None
    check = identity.token_checker() if identity else None
    api = FakeApi(
        api_key=None if identity else "sk-demo", token_check=check, flavor="azure" if identity else "openai"
    )
    api.record_requests = False
    training = SimulatedTraining(api, jobs=args.demo_jobs, every_seconds=args.demo_checkpoint_seconds)
    server = FakeApiServer(api, prefix=_DEMO_PROJECT_PATH if identity else "/v1").start()
    try:
        values = {"poll_interval_seconds": 2, "listen_address": "127.0.0.1", **_settings_values(args)}
        values.update(api_base_url=server.base_url, jobs=training.job_ids)
        values.update({"azure_auth": "entra"} if identity else {"api_key": "sk-demo"})
        settings = load_settings(values, args.config)
        settings.check_runnable()
    except SettingsError:
        server.stop()
        raise
    _start_logging(settings)
    training.start()

    def announce(url: str) -> None:
        print(
            f"ckpt-exporter demo: {len(training.job_ids)} simulated jobs, a new checkpoint every "
            f"~{args.demo_checkpoint_seconds:g}s each.\nMetrics: {url}\n"
            f"Try: curl -s {url} | grep openai_fine_tuning_checkpoint_train_loss\n"
            "Stop with Ctrl-C.",
            flush=True,
        )
        if identity:
            print("Keyless: Microsoft Entra ID tokens from a simulated managed identity.", flush=True)

    started = time.monotonic()
    try:
        return _run(settings, on_ready=announce)
    finally:
        training.stop()
        server.stop()
        log.debug("demo ran %.1fs", time.monotonic() - started)
