"""The fake fine-tuning API as a process of its own, filled with the benchmark's jobs.

    python bench/fake_server.py --running 1000 --finished 9000 --latency 0.05

prints `PORT <n>` once it listens on 127.0.0.1 and serves until SIGTERM/SIGINT. Besides the API
(ckpt_exporter.fake.FakeApi under /v1), a few control routes for the runner:

- POST /_bench/checkpoint {"job": n}: add the job's next checkpoint (step = last + 100); returns
  {"job_id", "step"}.
- GET /_bench/counts: the requests served so far, {"total", "by_endpoint", "by_job"}; by_job is
  [[endpoint, job_id, count], ...] (left out with ?summary=1).
- POST /_bench/reset: reset the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdata import STEP, checkpoint_metrics, job_fields, job_id

from ckpt_exporter.fake import FakeApi


def build_api(running: int, finished: int, checkpoints: int, latency: float) -> FakeApi:
    """Every job with `checkpoints` checkpoints and two events: a message and the metrics event of
    its last step (what a running job's live gauges come from)."""
    api = FakeApi(latency=latency, newest_first=True)
    api.record_requests = False
    for n in range(running + finished):
        fields = job_fields(n, running)
        created = fields["created_at"]
        jid = job_id(n)
        api.add_job(jid, **fields)
        api.add_event(jid, "Fine-tuning job started", created_at=created)
        for k in range(1, checkpoints + 1):
            step = k * STEP
            api.add_checkpoint(jid, step, checkpoint_metrics(n, step), created_at=created + step)
        last = checkpoints * STEP
        data = {"step": last, "total_steps": last + 10 * STEP, **checkpoint_metrics(n, last)}
        api.add_event(
            jid, f"Step {last}: training loss={data['train_loss']}", data=data, created_at=created + last
        )
    return api


def control_routes(api: FakeApi, app: web.Application) -> None:
    async def add_checkpoint(request: web.Request) -> web.Response:
        body = await request.json()
        n = int(body["job"])
        jid = job_id(n)
        job = api.jobs[jid]
        step = (job.checkpoints[-1]["step_number"] if job.checkpoints else 0) + STEP
        api.add_checkpoint(jid, step, checkpoint_metrics(n, step), created_at=job.created_at + step)
        return web.json_response({"job_id": jid, "step": step})

    async def counts(request: web.Request) -> web.Response:
        snapshot = api.request_counts  # the API's handlers run on this same loop: no change meanwhile
        by_endpoint: Counter[str] = Counter()
        for (endpoint, _), count in snapshot.items():
            by_endpoint[endpoint] += count
        result: dict[str, object] = {"total": sum(snapshot.values()), "by_endpoint": dict(by_endpoint)}
        if "summary" not in request.query:
            result["by_job"] = [[endpoint, jid, count] for (endpoint, jid), count in snapshot.items()]
        return web.json_response(result)

    async def reset(request: web.Request) -> web.Response:
        api.reset_counts()
        return web.json_response({"ok": True})

    app.router.add_post("/_bench/checkpoint", add_checkpoint)
    app.router.add_get("/_bench/counts", counts)
    app.router.add_post("/_bench/reset", reset)


async def serve(api: FakeApi, port: int) -> None:
    app = api.app()
    control_routes(api, app)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)  # as FakeApiServer
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The benchmark's fake fine-tuning API")
    parser.add_argument("--running", type=int, default=1000)
    parser.add_argument("--finished", type=int, default=0)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every API request")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    api = build_api(args.running, args.finished, args.checkpoints, args.latency)
    asyncio.run(serve(api, args.port))


if __name__ == "__main__":
    main()
