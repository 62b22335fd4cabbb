"""A `QueryTarget` that sends each query to a running `recstack serve` (POST /v1/rank/synthetic: the
server draws the query's candidates, so a load test needs no client-side features).

Requests go out from one asyncio event loop in a thread of its own, over a pool of keep-alive
connections, so `submit` never blocks the load generator's scheduler. The client speaks the little
HTTP/1.1 it needs over asyncio streams: a general client (httpx) costs 5-10 ms more per request on a
busy 2-core machine, which would be charged to the server. A 503 is a rejection (the server shed the
query); any other failure is an error with its reason.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from recstack.errors import ConfigError
from recstack.serve.protocol import Completion, Query

SYNTHETIC_PATH = "/v1/rank/synthetic"


class HttpError(Exception):
    """The connection broke or the response was not HTTP/1.1 as expected."""


class StaleConnection(HttpError):
    """The server had closed the connection before this request got any response."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def request(self, payload: bytes) -> tuple[int, bytes, bool]:
        """Send one request; (status, body, whether the server keeps the connection open)."""
        try:
            self.writer.write(payload)
            await self.writer.drain()
            status_line = await self.reader.readline()
        except ConnectionError as exc:
            raise StaleConnection(f"connection closed ({type(exc).__name__})") from None
        if not status_line:
            raise StaleConnection("connection closed")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP response: {status_line[:60]!r}")
        headers: dict[bytes, bytes] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                body += await self.reader.readexactly(size)
                await self.reader.readline()
            await self.reader.readline()
        else:
            body = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        return int(parts[1]), body, headers.get(b"connection", b"").lower() != b"close"

    def close(self) -> None:
        self.writer.close()


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of an http://host[:port] URL: the server's own paths are fixed, so a path, query
    or user is refused rather than dropped."""
    try:
        parts = urlsplit(url)
        port = 80 if parts.port is None else parts.port
    except ValueError as exc:  # a port out of range or not a number, a broken [IPv6] host
        raise ConfigError(f"--url {url!r}: {exc}", "use http://host:port, port in [1, 65535]") from None
    host = parts.hostname or ""
    if parts.scheme != "http" or not host or any(c.isspace() or not c.isprintable() for c in host):
        raise ConfigError(f"--url must be http://host:port, not {url!r}")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username is not None:
        raise ConfigError(f"--url takes http://host:port only (no path, query or user), not {url!r}")
    if port == 0:
        raise ConfigError(f"--url {url!r}: port 0 is no server's port", "use the port `recstack serve` printed")
    return host, port


class HttpTarget:
    def __init__(self, url: str, *, max_connections: int = 512, timeout_s: float = 60.0):
        self.host, self.port = parse_url(url)
        self._host_header = (f"[{self.host}]" if ":" in self.host else self.host).encode()
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        status, health = self._get("/health")
        if status != 200 or not isinstance(health, dict):
            raise ConfigError(f"{self.url}/health answered HTTP {status}; is it a recstack server?")
        self.server = health.get("model")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._counts = {"sent": 0, "ok": 0, "rejected": 0, "errors": 0}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="recstack-http-target", daemon=True)
        self._thread.start()

    def _get(self, path: str) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10.0)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ConfigError(f"no recstack server answers at {self.url} ({type(exc).__name__}: {exc})",
                              "start one with `recstack serve`") from None
        finally:
            connection.close()

    def submit(self, query: Query, done: Callable[[Completion], None]) -> None:
        asyncio.run_coroutine_threadsafe(self._send(query, done), self._loop)

    def _payload(self, size: int) -> bytes:
        body = b'{"size": %d}' % size
        return (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (SYNTHETIC_PATH.encode(), self._host_header, self.port, len(body))) + body

    async def _send(self, query: Query, done: Callable[[Completion], None]) -> None:
        self._counts["sent"] += 1
        rejected, error = False, None
        async with self._slots:
            try:
                status, body = await asyncio.wait_for(self._exchange(self._payload(query.size)), self.timeout_s)
                if status == 503:
                    rejected = True
                elif status != 200:
                    error = f"HTTP {status}: {_detail(body)}"
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finished = time.perf_counter()
        self._counts["rejected" if rejected else "errors" if error else "ok"] += 1
        done(Completion(query.id, query.arrival, finished, query.size, rejected=rejected, error=error))

    async def _exchange(self, payload: bytes) -> tuple[int, bytes]:
        """One request on a kept-alive connection, or a new one. A kept-alive connection the server
        closed while it sat idle (uvicorn closes them after 5 s) fails before any response: then
        the request goes once more, on a new connection."""
        while self._idle:
            try:
                return await self._request(self._idle.pop(), payload)
            except StaleConnection:
                continue
        return await self._request(_Connection(*await asyncio.open_connection(self.host, self.port)), payload)

    async def _request(self, connection: _Connection, payload: bytes) -> tuple[int, bytes]:
        try:
            status, body, keep = await connection.request(payload)
        except BaseException:
            connection.close()
            raise
        if keep:
            self._idle.append(connection)
        else:
            connection.close()
        return status, body

    def stats(self) -> dict[str, Any]:
        """The client's counts and the server's /health."""
        try:
            health = self._get("/health")[1]
        except ConfigError:
            health = None
        return {"url": self.url, "client": dict(self._counts), "server_health": health}

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def close_idle() -> None:
            for connection in self._idle:
                connection.close()
            self._idle.clear()

        asyncio.run_coroutine_threadsafe(close_idle(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body).get("detail", ""))[:200]
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
