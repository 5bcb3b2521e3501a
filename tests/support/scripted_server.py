"""A scripted OpenAI-compatible chat server on 127.0.0.1, for client benchmarks and fault tests.

It speaks HTTP/1.1 with keep-alive over asyncio streams (no framework, so faults are exact: a dropped
connection is a socket closed mid-exchange) and serves

    GET  /health                 -> 200 {"status": "ok"}
    GET  /v1/models              -> the one model name
    POST /v1/chat/completions    -> {"choices": [{"message": {"content": reply(body)}}], "usage": ...}

Capacity is modelled the way an inference server has it: at most `slots` requests are worked on at once
(vLLM's max_num_seqs), each takes `latency_s` (a number, or a function of the request body), the rest wait in line; so the server's limit is
slots / latency_s requests per second. `faults` maps the n-th arrival of the same prompt (1-based) to a
fault, so a test knows exactly which attempt fails how:

    "500"       HTTP 500                       "429"    HTTP 429 with Retry-After: retry_after_s
    "drop"      close the connection, no answer "slow"   answer after slow_s (past a client timeout)
    "truncate"  headers and half the body, then close     "400"    HTTP 400 (not retryable)

Run standalone: python -m support.scripted_server --latency-s 0.2 --slots 32 [--port 0]
(prints `listening on http://127.0.0.1:PORT/v1` once ready).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

Reply = Callable[[dict[str, Any]], str]

FAULTS = ("500", "429", "drop", "slow", "truncate", "400")


def fixed_reply(text: str = "<Problem>\nx\n</Problem>\n\n<Thinking>\ny\n</Thinking>\n\n<Answer>\n\\boxed{1}\n</Answer>") -> Reply:
    return lambda body: text


def _encodable(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


def prompt_key(body: dict[str, Any]) -> str:
    """The identity of a prompt across retries: its messages."""
    return json.dumps(body["messages"], sort_keys=True, ensure_ascii=False)


class ScriptedServer:
    def __init__(
        self,
        reply: Reply | None = None,
        *,
        latency_s: float | Callable[[dict[str, Any]], float] = 0.0,
        slots: int | None = None,
        faults: dict[int, str] | None = None,
        retry_after_s: float = 0.05,
        slow_s: float = 5.0,
        model: str = "scripted",
        port: int = 0,
    ):
        for attempt, fault in (faults or {}).items():
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r} for attempt {attempt}; known: {FAULTS}")
        self.reply = reply or fixed_reply()
        self.latency_s = latency_s
        self.slots = slots
        self.faults = dict(faults or {})
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.model = model
        self.port = port
        self.arrivals: Counter[str] = Counter()  # prompt -> how many times it arrived
        self.completed = 0  # 200 answers sent
        self.max_active = 0
        self.requests_seen: list[dict[str, Any]] = []  # bodies of every chat request, in arrival order
        self.headers_seen: list[dict[str, str]] = []
        self._active = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- lifecycle: in a background thread (tests) or in the foreground (python -m) ----------------------

    def start(self) -> ScriptedServer:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._open())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._close())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="scripted-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("scripted server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _open(self) -> None:
        self._slots = asyncio.Semaphore(self.slots) if self.slots else None
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        self._server.close()
        # end open connections' handlers before the loop closes, so none is left pending
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def serve_forever(self) -> None:
        await self._open()
        print(f"listening on {self.base_url}", flush=True)
        async with self._server:
            await self._server.serve_forever()

    # --- HTTP ---------------------------------------------------------------------------------------------

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
                keep = await self._dispatch(method, path, headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: dict, extra: dict[str, str] | None = None,
                    truncate: bool = False) -> None:
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}
        text = json.dumps(payload, ensure_ascii=False)
        # a reply holding a lone surrogate ('\ud800') goes out as a JSON \u escape, as real servers send it
        data = text.encode() if text.isascii() or _encodable(text) else json.dumps(payload).encode()
        head = [f"HTTP/1.1 {status} {reasons[status]}", "Content-Type: application/json",
                f"Content-Length: {len(data)}", "Connection: keep-alive"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (data[: len(data) // 2] if truncate else data))
        await writer.drain()

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes, writer) -> bool:
        if method == "GET" and path == "/health":
            await self._send(writer, 200, {"status": "ok"})
            return True
        if method == "GET" and path == "/v1/models":
            await self._send(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
            return True
        if method != "POST" or path != "/v1/chat/completions":
            await self._send(writer, 404, {"error": f"no route {method} {path}"})
            return True
        request = json.loads(body)
        self.requests_seen.append(request)
        self.headers_seen.append(headers)
        key = prompt_key(request)
        self.arrivals[key] += 1
        fault = self.faults.get(self.arrivals[key])
        if fault == "drop":
            return False
        if fault == "500":
            await self._send(writer, 500, {"error": {"message": "scripted internal error"}})
            return True
        if fault == "400":
            await self._send(writer, 400, {"error": {"message": "scripted bad request"}})
            return True
        if fault == "429":
            await self._send(writer, 429, {"error": {"message": "scripted overload"}}, {"Retry-After": f"{self.retry_after_s:g}"})
            return True
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if self._slots is not None:
            async with self._slots:
                await self._work(request)
        else:
            await self._work(request)
        try:
            text = self.reply(request)
        except Exception as err:  # a broken script answers 500 with the reason instead of hanging up
            await self._send(writer, 500, {"error": {"message": f"reply script failed: {err!r}"}})
            return True
        payload = {
            "id": f"chatcmpl-{self.completed}", "object": "chat.completion", "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": len(text.split()), "total_tokens": len(text.split())},
        }
        await self._send(writer, 200, payload, truncate=fault == "truncate")
        if fault == "truncate":
            return False
        self.completed += 1
        return True

    async def _work(self, request: dict[str, Any]) -> None:
        self._active += 1
        self.max_active = max(self.max_active, self._active)
        try:
            await asyncio.sleep(self.latency_s(request) if callable(self.latency_s) else self.latency_s)
        finally:
            self._active -= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--model", default="scripted")
    args = parser.parse_args()
    server = ScriptedServer(latency_s=args.latency_s, slots=args.slots, model=args.model, port=args.port)
    asyncio.run(server.serve_forever())


if __name__ == "__main__":
    main()
