"""A small async micro-batcher: requests wait up to a few ms to share one forward pass."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["MicroBatcher"]

log = logging.getLogger(__name__)

Item = tuple[np.ndarray, "asyncio.Future[np.ndarray]"]


class MicroBatcher:
    """Collects submitted uint8 batches for up to ``max_wait_s`` (or until ``max_batch`` images
    are waiting), runs ``fn`` once on their concatenation in one worker thread, and hands each
    caller its own rows. ``fn`` maps ``[n, ...]`` to an array whose first axis is ``n``.

    The queue and its consumer task belong to the running event loop; they are made on first
    use and made again if a different loop submits (as test clients without lifespan do).
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch: int = 32,
                 max_wait_s: float = 0.005) -> None:
        self.fn = fn
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="graft-serve")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.images = 0

    def _ensure(self) -> asyncio.Queue[Item]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._consume())
        assert self._queue is not None  # set just above; internal invariant
        return self._queue

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """``fn``'s rows for ``x`` once its batch has run (``fn``'s exception re-raised)."""
        queue = self._ensure()
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await queue.put((x, future))
        return await future

    async def _collect(self, queue: asyncio.Queue[Item]) -> list[Item]:
        """The first waiting item, then whatever arrives within ``max_wait_s`` (polled in 1 ms
        steps: ``wait_for(queue.get())`` can lose an item when its timeout races a put)."""
        loop = asyncio.get_running_loop()
        items = [await queue.get()]
        n = len(items[0][0])
        deadline = loop.time() + self.max_wait_s
        while n < self.max_batch:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.001))
                continue
            items.append(item)
            n += len(item[0])
        return items

    async def _consume(self) -> None:
        queue = self._queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect(queue)
            items = [(x, f) for x, f in items if not f.done()]  # callers that went away
            if not items:
                continue
            batch = np.concatenate([x for x, _ in items]) if len(items) > 1 else items[0][0]
            try:
                out: Any = await loop.run_in_executor(self._executor, self.fn, batch)
            except Exception as exc:  # every caller of this batch gets the error
                log.exception("batch of %d images failed", len(batch))
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            start = 0
            for x, future in items:
                if not future.done():
                    future.set_result(out[start:start + len(x)])
                start += len(x)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False)
