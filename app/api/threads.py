"""Where the API's blocking work runs.

A request's own work (a transaction, a read) takes one of the request threads, as many as the process
keeps Postgres connections (Database.pool_size): a thread beyond them would open a connection of its own
and close it after (a server process forked each time), so a burst past the pool waits its turn instead.
(SQLite's connections are files, opened at no such cost.) Node I/O that blocks for as long as a client
stays (a console's or a display's stream, an upload written and imported) runs on threads of its own: open
consoles never take the threads requests need."""

from collections.abc import Callable
from typing import TypeVar

from anyio import CapacityLimiter, to_thread
from anyio.lowlevel import RunVar

T = TypeVar("T")

# One per open console or display and per upload in progress: a bound, not a pool to wait on.
NODE_IO_THREADS = 1000

_node_io: RunVar[CapacityLimiter] = RunVar("corral_node_io")


def limit_request_threads(count: int) -> None:
    """Request threads of the running event loop (Starlette and FastAPI run sync work in anyio's default
    pool)."""
    to_thread.current_default_thread_limiter().total_tokens = count


async def in_node_io_thread(call: Callable[..., T], *args: object) -> T:
    try:
        limiter = _node_io.get()
    except LookupError:
        limiter = CapacityLimiter(NODE_IO_THREADS)
        _node_io.set(limiter)
    return await to_thread.run_sync(call, *args, limiter=limiter)
