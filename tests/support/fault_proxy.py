"""A fault-injecting HTTP proxy for tests: put it in front of a real OpenAI-compatible server.

Like support.scripted_server, faults are keyed by the n-th arrival (1-based) of the same prompt, so
a test knows which attempt fails how: "500", "429" (with Retry-After), "drop" (connection closed without an
answer), "slow" (held for slow_s before forwarding). Every other request is forwarded to the upstream server
unchanged and its answer relayed back unchanged.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter

import httpx

from support.scripted_server import prompt_key


class FaultProxy:
    def __init__(self, upstream: str, faults: dict[int, str] | None = None, *, retry_after_s: float = 0.05, slow_s: float = 3.0):
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:PORT (no /v1)
        self.faults = dict(faults or {})
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.arrivals: Counter[str] = Counter()
        self.forwarded = 0
        self.injected: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultProxy:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._open())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._close())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _open(self) -> None:
        self._client = httpx.AsyncClient(timeout=120)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        self._server.close()
        # end open connections' handlers before the loop closes, so none is left pending
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers["content-length"])) if "content-length" in headers else b""
                fault = None
                if method == "POST" and path.endswith("/chat/completions"):
                    key = prompt_key(json.loads(body))
                    self.arrivals[key] += 1
                    fault = self.faults.get(self.arrivals[key])
                if fault:
                    self.injected[fault] += 1
                if fault == "drop":
                    return
                if fault == "500":
                    await self._reply(writer, 500, b'{"error": "injected"}')
                    continue
                if fault == "429":
                    await self._reply(writer, 429, b'{"error": "injected overload"}', {"Retry-After": f"{self.retry_after_s:g}"})
                    continue
                if fault == "slow":
                    await asyncio.sleep(self.slow_s)
                forward = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
                response = await self._client.request(method, self.upstream + path, content=body, headers=forward)
                self.forwarded += 1
                await self._reply(writer, response.status_code, response.content)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, status: int, data: bytes, extra: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(data)}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()
