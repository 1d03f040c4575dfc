"""The report: the machine and the source a run measured, and the markdown tables of its results
(docs/benchmarks.md explains every figure)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions = {}
    for package in ("prometheus-client", "httpx", "httpx-aiohttp", "aiohttp", "pydantic"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
        "packages": versions,
    }


def source_info(source: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(source)}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        run = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        info["commit"] = run.stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "ckpt_exporter"],
            capture_output=True,
            text=True,
            check=True,
        )
        info["ckpt_exporter_modified"] = bool(status.stdout.strip())
    return info


def fmt_ms(d: dict[str, float]) -> str:
    return f"{d['median']:.1f} / {d['p99']:.1f}"


def _md_scale(results: dict[str, Any], add: Callable[[str], None]) -> None:
    add(f"**Scrape latency**, ms, median / p99 of {results['plan']['scrapes']} scrapes of /metrics")
    add(
        "(the naive exporter: prometheus_client labelled Gauges holding the same series, rendered per scrape)"
    )
    add("")
    add(
        "| jobs x 3 ckpts | series | ours gzip | ours gzip, after a change | ours plain | naive gzip "
        "| naive plain | naive ÷ ours (gzip) |"
    )
    add("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in results["scale"]:
        ratio = s["naive_gzip"]["median"] / s["ours_gzip"]["median"]
        ratio_cold = s["naive_gzip"]["median"] / s["ours_gzip_after_change"]["median"]
        add(
            f"| {s['jobs']:,} | {s['samples']:,} | {fmt_ms(s['ours_gzip'])} | "
            f"{fmt_ms(s['ours_gzip_after_change'])} | {fmt_ms(s['ours_plain'])} | "
            f"{fmt_ms(s['naive_gzip'])} | {fmt_ms(s['naive_plain'])} | "
            f"x{ratio:.0f} (x{ratio_cold:.0f} after a change) |"
        )
    add("")
    which = "second" if results["plan"]["steady"] else "first"
    add(f"**Memory and CPU** (running jobs x 3 checkpoints, API latency 0, the {which} poll cycle)")
    add("")
    add(
        "| jobs | ours RSS | naive exporter RSS (gauges only, no poller) "
        "| ours CPU s / poll cycle | poll cycle |"
    )
    add("| ---: | ---: | ---: | ---: | ---: |")
    for s in results["scale"]:
        rss = max(s["rss_mb"], s["rss_mb_after_scrapes"])
        add(
            f"| {s['jobs']:,} | {rss:.0f} MB | {s['naive_rss_mb']:.0f} MB | "
            f"{s['cpu_seconds_per_cycle']:.2f} | {s['cycle_seconds']:.2f} s |"
        )
    add("")


def _md_poll(results: dict[str, Any], add: Callable[[str], None]) -> None:
    p0, naive = results["poll"][0], results.get("naive_poll")
    add(
        f"**Requests per poll cycle**: {p0['running']:,} running + {p0['finished']:,} finished jobs "
        f"(3 checkpoints each), steady state, {p0['cycles_measured']} cycles"
    )
    add("")
    add("| | checkpoints | events | jobs listing pages | single-job reads | total | needed |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in results["poll"]:
        e = p["requests_per_cycle_by_endpoint"]
        add(
            f"| ours ({p['transport']}) | {e.get('checkpoints', 0):,.0f} | {e.get('events', 0):,.0f} | "
            f"{e.get('jobs', 0):,.0f} | {e.get('job', 0):,.0f} | {p['requests_per_cycle']:,.0f} | "
            f"{p['needed_requests_per_cycle']:,} |"
        )
    if naive is not None:
        ne = naive["requests_per_cycle_by_endpoint"]
        add(
            f"| naive poller | {ne.get('checkpoints', 0):,.0f} | {ne.get('events', 0):,.0f} | 0 | 0 | "
            f"{naive['requests_per_cycle']:,.0f} | {p0['needed_requests_per_cycle']:,} |"
        )
    add("")
    add(
        f"Finished jobs' checkpoint requests over the measured cycles: "
        f"{', '.join(str(p['finished_checkpoint_requests']) for p in results['poll'])} "
        f"(start-up, until the first quiet moment: {p0['startup_requests']:,} requests)."
    )
    add("")
    add(
        f"**Poll-cycle time**, same jobs, API latency {p0['latency_seconds'] * 1000:.0f} ms, "
        f"max_concurrency {p0['max_concurrency']}; floor = needed requests x latency / max_concurrency"
    )
    add("")
    add("| | poll cycle (mean) | floor | ÷ floor | CPU s / cycle | CPU ms / request |")
    add("| --- | ---: | ---: | ---: | ---: | ---: |")
    for p in results["poll"]:
        add(
            f"| ours, {p['transport']} transport | {p['cycle_seconds']:.2f} s | {p['floor_seconds']:.2f} s | "
            f"x{p['ratio_to_floor']:.2f} | {p['cpu_seconds_per_cycle']:.2f} | {p['cpu_ms_per_request']:.2f} |"
        )
    if naive is not None:
        add(
            f"| naive poller (every page of all {naive['jobs']:,} jobs) | {naive['cycle_seconds']:.2f} s | "
            f"{naive['floor_seconds']:.2f} s | x{naive['cycle_seconds'] / naive['floor_seconds']:.2f} | "
            f"{naive['cpu_seconds_per_cycle']:.2f} | "
            f"{1000 * naive['cpu_seconds_per_cycle'] / naive['requests_per_cycle']:.2f} |"
        )
    add("")


def _md_detection(results: dict[str, Any], add: Callable[[str], None]) -> None:
    d = results["detection"]
    add(
        f"**Detection latency** (checkpoint in the API → in /metrics), {len(d['trials'])} trials, "
        f"{d['jobs']} running jobs, poll interval {d['poll_interval_seconds']:g} s, API latency "
        f"{d['latency_seconds'] * 1000:.0f} ms: median {d['median_seconds']:.2f} s, "
        f"max {d['max_seconds']:.2f} s."
    )
    add("")


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    m = results["machine"]
    add(f"Run: {results['mode']}, {results['started']}; {m['nproc']} cores ({m['cpu_model']}), ")
    add(f"{m['ram_gb']} GB RAM, Python {m['python']}; ckpt_exporter {results['source'].get('commit', '?')}.")
    add("")
    if "scale" in results:
        _md_scale(results, add)
    if results.get("poll"):
        _md_poll(results, add)
    if "detection" in results:
        _md_detection(results, add)
    verdicts = results.get("checks") or results.get("targets") or []
    title = "Checks (CI)" if results["mode"] == "quick" else "Targets"
    add(f"**{title}**")
    add("")
    add("| | holds | |")
    add("| --- | --- | --- |")
    for v in verdicts:
        add(f"| {v['name']} | {'yes' if v['holds'] else '**no**'} | {v['detail']} |")
    return "\n".join(lines)
