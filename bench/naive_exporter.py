"""The naive scrape baseline: prometheus_client's labelled Gauges, rendered on every scrape.

    python bench/naive_exporter.py --metrics saved-metrics.txt

reads a /metrics body that ckpt_exporter served (text format) and re-creates every family in it as
prometheus_client metrics (Gauge for gauges and info, Counter for counters; the one histogram,
ckpt_exporter_poll_duration_seconds, is left out) with the same names, help, label names, label
values and values, next to prometheus_client's standard process/platform/GC collectors. It serves
them with prometheus_client's own start_http_server, which renders the whole registry on every
scrape (and gzips it when asked). Prints `PORT <n> SAMPLES <k>` once it listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.parser import text_string_to_metric_families

STANDARD_PREFIXES = ("process_", "python_")  # from the standard collectors registered below


def build_registry(text: str) -> tuple[CollectorRegistry, int]:
    """A registry holding every (non-standard, non-histogram) series of `text`; and their count."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # as ckpt_exporter does
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    samples = 0
    for family in text_string_to_metric_families(text):
        if family.name.startswith(STANDARD_PREFIXES) or family.type not in ("gauge", "counter", "unknown"):
            continue
        if not family.samples:
            continue
        labelnames = list(family.samples[0].labels)
        if family.type == "counter":
            counter = Counter(family.name, family.documentation, labelnames, registry=registry)
            for sample in family.samples:
                child = counter.labels(**sample.labels) if labelnames else counter
                child.inc(sample.value)
                samples += 1
        else:
            gauge = Gauge(family.name, family.documentation, labelnames, registry=registry)
            for sample in family.samples:
                gauge_child = gauge.labels(**sample.labels) if labelnames else gauge
                gauge_child.set(sample.value)
                samples += 1
    return registry, samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="prometheus_client Gauges rendered per scrape")
    parser.add_argument("--metrics", type=Path, required=True, help="a /metrics body (text format)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    registry, samples = build_registry(args.metrics.read_text(encoding="utf-8"))
    server, _thread = start_http_server(args.port, addr="127.0.0.1", registry=registry)
    print(f"PORT {server.server_port} SAMPLES {samples}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
