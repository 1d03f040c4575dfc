"""FakeApiServer: runs a FakeApi on loopback in a thread of its own (its own event loop)."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from ckpt_exporter.fake.state import FakeApi


class FakeApiServer:
    """Runs a FakeApi on loopback in a thread of its own (its own event loop).

    with FakeApiServer(api) as server:   # port 0: a free port, read back from server.port
        httpx.get(server.base_url + "/fine_tuning/jobs", headers=...)
    """

    def __init__(self, api: FakeApi, host: str = "127.0.0.1", port: int = 0, prefix: str = "/v1") -> None:
        self.api = api
        self.host = host
        self.port = port
        self.prefix = prefix
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-api", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    @property
    def running(self) -> bool:
        """Whether the server's thread is still alive (False once stop() has returned)."""
        return self._thread.is_alive()

    def start(self) -> FakeApiServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        # aiohttp waits up to shutdown_timeout (60 s by default) for a connection's handler on
        # cleanup, and a connection accepted just as cleanup starts is missed by its close of the
        # idle ones: a test's teardown then hung for the whole 60 s. A fake has nothing to finish.
        self._runner = web.AppRunner(self.api.app(self.prefix), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the port the system chose for port 0

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
