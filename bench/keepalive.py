"""Answer time on a kept-alive connection against a fresh one, over plain HTTP and TLS.

    python bench/keepalive.py                    # this checkout's ckpt_exporter
    python bench/keepalive.py --source DIR       # another checkout's (e.g. `git archive` of main)

The server is ckpt_exporter's MetricsServer in a process of its own (this script re-run with
--serve and PYTHONPATH=SOURCE), serving an empty exporter on 127.0.0.1; the client is http.client
in this process. For each of plain HTTP and TLS (a self-signed certificate made here), and each of
/healthz and /metrics: N requests on one kept-alive connection, then N on a new connection each
(connect and TLS handshake included). Prints the median and p99 of each, in milliseconds, as a
markdown table. Nothing is asserted: docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import http.client
import inspect
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def serve(web_config: str | None) -> None:
    """The child: a MetricsServer on a free port, which it prints; it stops when stdin closes."""
    from ckpt_exporter.exposition import ExpositionCache
    from ckpt_exporter.selfmetrics import SelfMetrics
    from ckpt_exporter.server import MetricsApp, MetricsServer
    from ckpt_exporter.webconfig import load_web_config

    web = load_web_config(Path(web_config)) if web_config else None
    jobs = ExpositionCache()
    jobs.start()
    app = MetricsApp(jobs, SelfMetrics(), lambda: True)
    if "listen" in inspect.signature(MetricsServer).parameters:
        server = MetricsServer(app, [("127.0.0.1", 0)], web)
    else:  # before several listen addresses: (app, address, port, web_config)
        server = MetricsServer(app, "127.0.0.1", 0, web)  # type: ignore[arg-type,call-arg]
    server.start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()


def timings(connect: callable, path: str, n: int, keep_alive: bool) -> list[float]:  # type: ignore[valid-type]
    out = []
    conn = connect()
    conn.request("GET", path)
    conn.getresponse().read()  # warm-up (and the kept-alive connection's handshake)
    for _ in range(n):
        if not keep_alive:
            conn.close()
            started = time.perf_counter()
            conn = connect()
        else:
            started = time.perf_counter()
        conn.request("GET", path)
        conn.getresponse().read()
        out.append((time.perf_counter() - started) * 1000)
    conn.close()
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def measure(source: Path, n: int) -> list[tuple[str, str, str, float, float]]:
    # This checkout's certificate maker, here in the client only: the server child runs --source's.
    sys.path.insert(0, str(REPO))
    from ckpt_exporter.fake.certs import self_signed

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "server.crt", Path(tmp) / "server.key"
        self_signed(cert, key)
        web = Path(tmp) / "web.yml"
        web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
        context = ssl.create_default_context(cafile=str(cert))
        for scheme, config in (("http", ""), ("https", str(web))):
            child = subprocess.Popen(
                [sys.executable, __file__, "--serve", config],
                env={**os.environ, "PYTHONPATH": str(source), "PYTHONDONTWRITEBYTECODE": "1"},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdout is not None and child.stdin is not None
            port = int(child.stdout.readline())

            def connect(scheme: str = scheme, port: int = port) -> http.client.HTTPConnection:
                if scheme == "https":
                    return http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
                return http.client.HTTPConnection("127.0.0.1", port, timeout=10)

            try:
                for path in ("/healthz", "/metrics"):
                    for keep_alive in (True, False):
                        values = timings(connect, path, n, keep_alive)
                        mode = "kept alive" if keep_alive else "new connection"
                        rows.append((scheme, path, mode, statistics.median(values), p99(values)))
            finally:
                child.stdin.close()
                child.wait(10)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=REPO, help="checkout whose ckpt_exporter is measured")
    parser.add_argument("-n", type=int, default=200, help="requests per case")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve or None)
        return
    print("| scheme | path | connection | median ms | p99 ms |\n| --- | --- | --- | ---: | ---: |")
    for scheme, path, mode, median, high in measure(args.source.resolve(), args.n):
        print(f"| {scheme} | {path} | {mode} | {median:.2f} | {high:.2f} |")


if __name__ == "__main__":
    main()
