"""Calls into the thread pool that the concurrent requests of one event loop share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")
Pending = dict[tuple[asyncio.AbstractEventLoop, Hashable], "asyncio.Future[T]"]


async def shared_in_thread(pending: Pending[T], key: Hashable, call: Callable[[], T]) -> T:
    """`call` run in the thread pool once for every caller on this event loop that asks with `key` while it
    runs: each gets its answer or its exception, and a caller that goes away cancels only its own wait.
    A burst of callers otherwise took a thread hand-off each (and a database connection, if `call` reads)."""
    slot = (asyncio.get_running_loop(), key)  # a future belongs to its event loop
    shared = pending.get(slot)
    if shared is None:
        shared = pending[slot] = asyncio.ensure_future(run_in_threadpool(call))
        shared.add_done_callback(lambda _: pending.pop(slot, None))
    return await asyncio.shield(shared)
