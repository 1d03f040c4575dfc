"""Request slots: at most N requests in flight, and the urgent ones first in line.

asyncio.Semaphore serves its waiters in arrival order. A walk of the jobs listing is a chain of
requests (each page's cursor comes from the one before), so in arrival order each of its pages
would wait behind every checkpoints and events request queued meanwhile: with many running jobs,
ten pages took ten queues' time. Urgent waiters go before the others; among equals, arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PrioritySlots:
    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._free = slots
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        return self._free

    @asynccontextmanager
    async def hold(self, *, urgent: bool = False) -> AsyncIterator[None]:
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if self._free > 0 and not self._urgent and not self._normal:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._normal).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # a release may have dropped it already
                    (self._urgent if urgent else self._normal).remove(waiter)
            raise

    def _release(self) -> None:
        """Hand the slot to the first live waiter, urgent ones first; else it is free again."""
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
