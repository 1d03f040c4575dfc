"""The naive poller: every cycle, reads every page of every job's lists, running or finished.

    python bench/naive_poller.py --base-url http://127.0.0.1:PORT/v1 --jobs 10000 --cycles 2 \\
        --lists checkpoints,events

The same HTTP stack as ckpt_exporter's default (httpx on httpx-aiohttp's transport), the same
number of requests in flight (--max-concurrency) and the same page size; it parses each page's JSON
and follows `has_more`, for each list named by --lists (the lists ckpt_exporter reads per job). It
asks for no status (a favour to the baseline, which would need them too to export the same).
Prints one JSON line: {"cycles": [{"seconds", "requests"}]}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
from httpx_aiohttp import AiohttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdata import job_id


async def read_all_pages(
    client: httpx.AsyncClient, slots: asyncio.Semaphore, jid: str, name: str, limit: int
) -> int:
    requests = 0
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after
        async with slots:
            response = await client.get(f"fine_tuning/jobs/{jid}/{name}", params=params)
        requests += 1
        response.raise_for_status()
        page = json.loads(response.content)
        if not page["has_more"] or not page["data"]:
            return requests
        after = page["data"][-1]["id"]


async def run(
    base_url: str, jobs: int, lists: list[str], cycles: int, max_concurrency: int, page_size: int
) -> list[dict[str, float]]:
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    results = []
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/",
        headers={"Authorization": "Bearer sk-bench"},
        timeout=60,
        transport=AiohttpTransport(limits=limits),
    ) as client:
        slots = asyncio.Semaphore(max_concurrency)
        for _ in range(cycles):
            started = time.monotonic()
            reads = [
                read_all_pages(client, slots, job_id(n), name, page_size)
                for n in range(jobs)
                for name in lists
            ]
            counts = await asyncio.gather(*reads)
            results.append({"seconds": time.monotonic() - started, "requests": sum(counts)})
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Reads every page of every job, every cycle")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--jobs", type=int, required=True, help="jobs 0 .. jobs-1 of benchdata")
    parser.add_argument("--lists", default="checkpoints", help="comma-separated: checkpoints,events")
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--max-concurrency", type=int, default=32)
    parser.add_argument("--page-size", type=int, default=20)
    args = parser.parse_args(argv)
    lists = [name for name in args.lists.split(",") if name]
    cycles = asyncio.run(
        run(args.base_url, args.jobs, lists, args.cycles, args.max_concurrency, args.page_size)
    )
    print(json.dumps({"cycles": cycles}), flush=True)


if __name__ == "__main__":
    main()
