"""A lean HTTP/1.1 client (h11 over asyncio streams) for latency figures under concurrency.

httpx spends about a millisecond of client CPU per request; 32 racing requests or 50 watch streams in one
benchmark process then measure the client's own queue as much as the server. Here connections are opened
before the clock starts, and a watch line is timed when its bytes arrive, before anything is parsed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import h11


class Connection:
    """One keep-alive connection: requests in turn, or one streamed response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str) -> None:
        self._reader, self._writer, self._token = reader, writer, token
        self._h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, url: str, token: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, token)

    def close(self) -> None:
        self._writer.close()

    async def _send(self, method: str, path: str, body: bytes | None, content_type: str) -> None:
        headers = [("Host", "corral"), ("Authorization", f"Bearer {self._token}")]
        if body is not None:
            headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        data = self._h11.send(h11.Request(method=method, target=path, headers=headers))
        if body is not None:
            data += self._h11.send(h11.Data(data=body))
        data += self._h11.send(h11.EndOfMessage())
        self._writer.write(data)
        await self._writer.drain()

    async def _next_event(self) -> h11.Event:
        while True:
            event = self._h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # a response came before the last one was read: a bug here
                raise ConnectionError("the connection is paused")
            self._h11.receive_data(await self._reader.read(65536))

    async def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        """(status, body) of one request; the connection is ready for the next one afterwards."""
        await self._send(method, path, body, content_type)
        status, chunks = 0, []
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._h11.start_next_cycle()
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError(f"{method} {path}: the server closed the connection")

    async def lines(self, path: str) -> AsyncIterator[tuple[float, bytes]]:
        """The lines of a streamed GET, each with the monotonic time its last bytes arrived."""
        await self._send("GET", path, None, "")
        pending = b""
        while True:
            self._h11.receive_data(await self._reader.read(65536))
            arrived = time.monotonic()
            while (event := self._h11.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.Response) and event.status_code != 200:
                    raise ConnectionError(f"GET {path}: {event.status_code}")
                if isinstance(event, h11.Data):
                    pending += bytes(event.data)
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        if line:
                            yield arrived, line
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return


async def race(
    url: str, token: str, method: str, path: str, body: bytes | None, racers: int
) -> list[tuple[int, float]]:
    """`racers` copies of one request, sent at once over connections opened beforehand: (status, seconds)."""

    async def timed(connection: Connection) -> tuple[int, float]:
        started = time.perf_counter()
        status, _ = await connection.request(method, path, body)
        return status, time.perf_counter() - started

    async with opened(url, token, racers) as connections:
        await asyncio.gather(*(c.request("GET", "/healthz") for c in connections))  # each one accepted
        return list(await asyncio.gather(*(timed(c) for c in connections)))


@asynccontextmanager
async def opened(url: str, token: str, count: int) -> AsyncIterator[list[Connection]]:
    """`count` connections, opened together and closed afterwards."""
    connections = list(await asyncio.gather(*(Connection.open(url, token) for _ in range(count))))
    try:
        yield connections
    finally:
        for connection in connections:
            connection.close()
