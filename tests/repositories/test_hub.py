"""The in-process hub's waits from an event loop: woken by a notify from another thread, ended by their
timeout, and gone from the hub either way."""

from __future__ import annotations

import asyncio
import threading

from app.db import EVENTS_CHANNEL, Hub


def waiting(hub: Hub) -> int:
    return len(hub._async_waiters[EVENTS_CHANNEL])


def test_waits_on_one_loop_are_woken_by_a_notify_from_another_thread() -> None:
    hub = Hub()

    async def main() -> list[int]:
        waits = [asyncio.create_task(hub.wait_async(EVENTS_CHANNEL, 0, 30)) for _ in range(50)]
        await asyncio.sleep(0.05)  # every wait is registered
        assert waiting(hub) == 50
        threading.Thread(target=hub.notify, args=(EVENTS_CHANNEL,)).start()
        return await asyncio.wait_for(asyncio.gather(*waits), 5)

    assert asyncio.run(main()) == [1] * 50
    assert waiting(hub) == 0


def test_a_wait_that_times_out_or_is_cancelled_leaves_nothing_behind() -> None:
    hub = Hub()

    async def main() -> None:
        assert await hub.wait_async(EVENTS_CHANNEL, 0, 0.01) == 0  # nothing changed: the counter as seen
        cancelled = asyncio.create_task(hub.wait_async(EVENTS_CHANNEL, 0, 30))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)

    for _ in range(3):
        asyncio.run(main())
    assert waiting(hub) == 0
    hub.notify(EVENTS_CHANNEL)  # a notify with no waiter left, after their loops closed
    assert hub.counter(EVENTS_CHANNEL) == 1


def test_a_wait_after_the_counter_moved_returns_at_once() -> None:
    hub = Hub()
    hub.notify(EVENTS_CHANNEL)

    async def main() -> int:
        return await asyncio.wait_for(hub.wait_async(EVENTS_CHANNEL, 0, 30), 1)

    assert asyncio.run(main()) == 1
