"""The scale benchmark: ckpt_exporter against the loopback fake API, beside naive baselines.

    python bench/run.py            # the full run (about 15 minutes on 2 cores)
    python bench/run.py --quick    # CI: small sizes, asserts machine-independent ratios only

Every process is real and measured from outside: the fake API (bench/fake_server.py), the exporter
(`python -m ckpt_exporter --config FILE`), the naive exporter (bench/naive_exporter.py) and the naive
poller (bench/naive_poller.py) each run in a process of their own, on 127.0.0.1 only. Scrape
latency is the time of an HTTP GET of /metrics (new connection, whole body read), RSS is VmRSS
from /proc, CPU is utime+stime from /proc, poll-cycle time comes from the exporter's
ckpt_exporter_poll_duration_seconds histogram and requests from the fake's own counts.

Prints a markdown table and writes the results as JSON (bench/results/latest.json unless --out).
With --quick it exits 1 when one of its checks fails. docs/benchmarks.md explains every figure.

This module is the command line; the run's parts live beside it: plans (what is measured),
processes (supervision of the children), wire (HTTP to them), drivers (the fake API and the
exporter), measure_scale and measure_poll (the measurements), verdicts and report (the output).
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # the modules beside this one, however the file is run

from drivers import Fake  # noqa: E402
from measure_poll import detection_run, naive_poll_run, poll_run  # noqa: E402
from measure_scale import scale_run  # noqa: E402
from plans import FULL, QUICK, Plan  # noqa: E402
from processes import Children  # noqa: E402
from report import machine, markdown, source_info  # noqa: E402
from verdicts import quick_checks, targets  # noqa: E402

REPO = BENCH.parent
PARTS = ("scale", "poll", "detection")


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM ends the run as Ctrl-C does, so that every child is stopped on the way out."""
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="CI: small sizes, checks machine-independent ratios"
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH / "results" / "latest.json", help="where to write the JSON results"
    )
    parser.add_argument("--markdown", type=Path, help="also write the markdown table to this file")
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="the directory whose ckpt_exporter package is measured (default: this repository)",
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default: all of {','.join(PARTS)})",
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if not only <= set(PARTS):
        parser.error(f"--only: unknown part(s) {', '.join(sorted(only - set(PARTS)))}")
    args.only = only
    return args


def run_parts(
    children: Children,
    plan: Plan,
    only: set[str],
    results: dict[str, Any],
    save: Callable[[], None],
    log: Callable[[str], None],
) -> None:
    """The parts asked for, in order, saving the results after each."""
    if "scale" in only:
        log("scrape latency, RSS, CPU per cycle")
        results["scale"] = []
        for jobs in plan.sizes:
            results["scale"].append(scale_run(children, plan, jobs, log))
            save()
    if "poll" in only:
        log(
            f"poll cycles: {plan.running} running + {plan.finished} finished jobs, "
            f"{plan.latency * 1000:.0f} ms"
        )
        fake = Fake(children, plan.running, plan.finished, plan.latency)
        results["poll"] = []
        for transport in plan.transports:
            results["poll"].append(poll_run(children, plan, fake, transport, log))
            save()
        lists = "checkpoints,events" if results["poll"][0]["reads_events"] else "checkpoints"
        results["naive_poll"] = naive_poll_run(children, plan, fake, lists, log)
        children.stop(fake.process)
        save()
    if "detection" in only:
        log("detection latency")
        results["detection"] = detection_run(children, plan, log)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    source = args.source.resolve()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupted)
    results: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "source": source_info(source),
        "plan": asdict(plan),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part, so that a failure later keeps what was measured
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="ckpt-bench-") as tmp:
        children = Children(Path(tmp), source)
        try:
            run_parts(children, plan, args.only, results, save, log)
        except BaseException:
            log("the run failed; logs of the processes it started:")
            for process in children.running():
                log(f"--- {process.name}\n{process.tail()}")
            results["failed"] = True
            save()
            raise
        finally:
            children.stop_all()
    results["seconds"] = time.monotonic() - started
    return conclude(plan, args, results, save, log)


def conclude(
    plan: Plan,
    args: argparse.Namespace,
    results: dict[str, Any],
    save: Callable[[], None],
    log: Callable[[str], None],
) -> int:
    """The verdicts, saved with the results; the markdown table printed; 1 when a quick check fails."""
    verdicts = quick_checks(results) if plan.quick else targets(results)
    results["checks" if plan.quick else "targets"] = verdicts.items
    save()
    table = markdown(results)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    print(table)
    log(f"done in {results['seconds']:.0f}s; results in {args.out}")
    if plan.quick and not verdicts.all_hold:
        log("FAILED: " + "; ".join(v["name"] for v in verdicts.items if not v["holds"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
