"""The command line: `ckpt-exporter [run|demo|check-config] [--setting value ...]`.

Every setting (except the key, which never belongs on a command line) has a flag named after it:
--poll-interval-seconds 5, --jobs ftjob-a,ftjob-b, ... Flags beat environment beats config file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckpt_exporter import __version__
from ckpt_exporter.logging_setup import redact, register_secret, setup_logging
from ckpt_exporter.settings import (
    Settings,
    SettingsError,
    cli_field_names,
    load_settings,
    settings_file,
)

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    settings_flags = argparse.ArgumentParser(add_help=False)
    settings_flags.add_argument(
        "--config", type=Path, metavar="PATH", help="YAML settings file (or CKPT_EXPORTER_CONFIG_FILE)"
    )
    for name in cli_field_names():
        field = Settings.model_fields[name]
        settings_flags.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="VALUE",
            default=None,
            help=f"(CKPT_EXPORTER_{name.upper()}; default: {field.get_default(call_default_factory=True)!r})",
        )
    parser = argparse.ArgumentParser(
        prog="ckpt-exporter",
        description="Prometheus exporter for OpenAI fine-tuning checkpoints.",
        parents=[settings_flags],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{run,demo,check-config}")
    commands.add_parser("run", parents=[settings_flags], help="run the exporter (the default)")
    demo = commands.add_parser(
        "demo", parents=[settings_flags], help="run against a built-in simulated API: no key, no network"
    )
    demo.add_argument("--demo-jobs", type=int, default=3, help="simulated jobs (default 3)")
    demo.add_argument(
        "--demo-checkpoint-seconds",
        type=float,
        default=5.0,
        help="each job gains a checkpoint this often (default 5)",
    )
    commands.add_parser(
        "check-config", parents=[settings_flags], help="print the effective settings (key masked) and exit"
    )
    return parser


def _settings_values(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in cli_field_names() if getattr(args, name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A settings error quotes the value it rejects: never the key, even one pasted in the wrong place.
    for name in ("CKPT_EXPORTER_API_KEY", "OPENAI_API_KEY"):
        register_secret(os.environ.get(name))
    command = args.command or "run"
    try:
        if command == "demo":
            return _demo(args)
        settings = load_settings(_settings_values(args), args.config)
        settings.require_api_key()
    except SettingsError as exc:
        print(f"ckpt-exporter: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "check-config":
        print(json.dumps(settings.masked(), indent=2))
        return 0
    setup_logging(settings.log_level, settings.log_format, secrets=[settings.read_api_key()])
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
    except OSError as exc:  # the listen address is taken or invalid
        print(
            f"ckpt-exporter: cannot listen on {settings.listen_address}:{settings.listen_port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1


def _demo(args: argparse.Namespace) -> int:
    from ckpt_exporter.fake import FakeApi, FakeApiServer, SimulatedTraining

    api = FakeApi(api_key="sk-demo")
    api.record_requests = False
    training = SimulatedTraining(api, jobs=args.demo_jobs, every_seconds=args.demo_checkpoint_seconds)
    server = FakeApiServer(api).start()
    values = {"poll_interval_seconds": 2, "listen_address": "127.0.0.1", **_settings_values(args)}
    values.update(api_base_url=server.base_url, api_key="sk-demo", jobs=training.job_ids)
    settings = load_settings(values, args.config)
    setup_logging(settings.log_level, settings.log_format)
    training.start()

    def announce(url: str) -> None:
        print(
            f"ckpt-exporter demo: {len(training.job_ids)} simulated jobs, a new checkpoint every "
            f"~{args.demo_checkpoint_seconds:g}s each.\nMetrics: {url}\n"
            f"Try: curl -s {url} | grep openai_fine_tuning_checkpoint_train_loss\n"
            "Stop with Ctrl-C.",
            flush=True,
        )

    started = time.monotonic()
    try:
        return _run(settings, on_ready=announce)
    finally:
        training.stop()
        server.stop()
        logging.getLogger(__name__).debug("demo ran %.1fs", time.monotonic() - started)
