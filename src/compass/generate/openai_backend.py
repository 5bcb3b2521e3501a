"""OpenAI-compatible chat completions over HTTP (vLLM, SGLang, `transformers serve`, hosted APIs).

A streaming pool: a background thread runs an asyncio loop with one httpx client; the caller's thread pulls
requests from its iterable only while fewer than `2 * concurrency` are outstanding, so the HTTP slots always
have work queued behind them and memory stays bounded however long the input is. Results are yielded in
completion order. Each attempt takes a slot from a semaphore of `concurrency`; a request waiting out a
backoff holds no slot, so one slow retry never idles the pool.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import os
import queue
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import httpx

from compass.errors import CompassError
from compass.generate.base import GenRequest, GenResult

# Statuses worth retrying: overload (429), timeouts the server reports (408), and server-side failures.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Retryable(Exception):
    """An attempt that failed in a way a later attempt may not: carries the server's Retry-After, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    """An attempt that failed in a way retrying cannot fix (4xx other than 408/425/429, malformed answer shape)."""


@dataclass
class _Endpoint:
    url: str  # full .../chat/completions URL
    active: int = 0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None when absent or unparsable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [cap/2, cap], cap = min(max_s, base_s * 2**(attempt-1)).

    Jitter spreads the retries of many requests that failed together (a server restart) so they do not come
    back as one burst; the lower half is kept so a retry never fires immediately."""
    cap = min(max_s, base_s * (2 ** (attempt - 1)))
    return rng.uniform(cap / 2, cap)


class OpenAIBackend:
    """Chat completions against one or several OpenAI-compatible base URLs (e.g. http://localhost:8000/v1)."""

    def __init__(
        self,
        base_urls: list[str],
        model: str,
        *,
        concurrency: int = 64,
        timeout_s: float = 600.0,
        max_retries: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        api_key_env: str = "OPENAI_API_KEY",
        extra_body: dict | None = None,
    ):
        if not base_urls:
            raise CompassError("openai backend: base_urls is empty; give at least one URL such as http://localhost:8000/v1")
        for url in base_urls:
            if not url.startswith(("http://", "https://")):
                raise CompassError(f"openai backend: base URL must start with http:// or https://, got {url!r}")
        if concurrency < 1:
            raise CompassError(f"openai backend: concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise CompassError(f"openai backend: max_retries must be >= 0, got {max_retries}")
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.model = model
        self.name = f"openai:{model}"
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.api_key_env = api_key_env
        self.extra_body = dict(extra_body or {})
        reserved = sorted(set(self.extra_body) & {"model", "messages", "max_tokens", "temperature", "top_p", "seed", "stream"})
        if reserved:
            raise CompassError(f"openai backend: extra_body may not set {reserved}; they come from the request")

    # --- the sync face ---------------------------------------------------------------------------------

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[GenResult]:
        # The key is read here, per run, and lives only in the client's default headers.
        key = os.environ.get(self.api_key_env)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="compass-openai-pool", daemon=True)
        thread.start()
        done: queue.Queue[Future] = queue.Queue()
        pending: set[Future] = set()
        pool = asyncio.run_coroutine_threadsafe(self._open(key), loop).result()
        window = 2 * self.concurrency  # queued work behind every slot, so a finished slot refills at once
        try:
            source = iter(requests)
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        request = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    future = asyncio.run_coroutine_threadsafe(self._run_one(pool, request), loop)
                    pending.add(future)
                    future.add_done_callback(done.put)
                if not pending:
                    return
                future = done.get()
                pending.discard(future)
                yield future.result()
        finally:
            for future in pending:
                future.cancel()
            asyncio.run_coroutine_threadsafe(pool.client.aclose(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    # --- the async pool --------------------------------------------------------------------------------

    async def _open(self, key: str | None) -> _Pool:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        client = httpx.AsyncClient(
            headers=headers, limits=limits,
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 30.0)),
        )
        endpoints = [_Endpoint(f"{u}/chat/completions") for u in self.base_urls]
        return _Pool(client, asyncio.Semaphore(self.concurrency), endpoints, key)

    async def _run_one(self, pool: _Pool, request: GenRequest) -> GenResult:
        body = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            **self.extra_body,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        payload = json.dumps(body, ensure_ascii=False).encode()
        t0 = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with pool.slots:
                    endpoint = pool.pick()
                    endpoint.active += 1
                    try:
                        text, tokens, finish = await self._attempt(pool.client, endpoint.url, payload)
                    finally:
                        endpoint.active -= 1
                return GenResult(request.id, text, None, attempt, tokens, time.perf_counter() - t0, finish, request.meta)
            except _Fatal as err:
                return self._failed(pool, request, f"{err}", attempt, t0)
            except _Retryable as err:
                if attempt > self.max_retries:
                    return self._failed(pool, request, f"{err} (gave up after {attempt} attempts)", attempt, t0)
                delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, pool.rng)
                if err.retry_after is not None:
                    # the server said when; wait at least that long, but never beyond our own ceiling
                    delay = min(max(delay, err.retry_after), max(self.backoff_max_s, delay))
                await asyncio.sleep(delay)

    async def _attempt(self, client: httpx.AsyncClient, url: str, payload: bytes) -> tuple[str, int | None, str | None]:
        try:
            # httpx's timeout is per read/write; this bounds the whole exchange, a trickling answer included
            async with asyncio.timeout(self.timeout_s):
                response = await client.post(url, content=payload)
        except TimeoutError:
            raise _Retryable(f"timeout after {self.timeout_s:g}s from {url}") from None
        except httpx.TimeoutException as err:
            raise _Retryable(f"timeout ({type(err).__name__}) from {url}") from None
        except httpx.TransportError as err:
            raise _Retryable(f"connection error ({type(err).__name__}: {err}) from {url}") from None
        if response.status_code != 200:
            detail = response.text[:300].replace("\n", " ")
            message = f"HTTP {response.status_code} from {url}: {detail}"
            if response.status_code in RETRY_STATUSES:
                raise _Retryable(message, parse_retry_after(response.headers.get("retry-after")))
            raise _Fatal(message)
        try:
            data = response.json()
        except ValueError:
            # a truncated body (proxy or server dying mid-answer) is transient
            raise _Retryable(f"response from {url} is not valid JSON: {response.text[:120]!r}") from None
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
            finish = choice.get("finish_reason")  # optional in the protocol
        except (KeyError, IndexError, TypeError):
            raise _Fatal(f"response from {url} has no choices[0].message.content: {json.dumps(data)[:200]}") from None
        usage = data.get("usage") or {}  # optional in the protocol
        return ("" if text is None else text), usage.get("completion_tokens"), finish

    def _failed(self, pool: _Pool, request: GenRequest, message: str, attempts: int, t0: float) -> GenResult:
        if pool.key:
            message = message.replace(pool.key, "***")  # a server echoing our headers must not leak the key
        return GenResult(request.id, None, message, attempts, None, time.perf_counter() - t0, None, request.meta)


class _Pool:
    """State owned by the event loop thread: client, slot semaphore, endpoints, jitter RNG."""

    def __init__(self, client: httpx.AsyncClient, slots: asyncio.Semaphore, endpoints: list[_Endpoint], key: str | None):
        self.client = client
        self.slots = slots
        self.endpoints = endpoints
        self.key = key
        self.rng = random.Random()
        self._next = 0

    def pick(self) -> _Endpoint:
        """Least-loaded endpoint; ties go round-robin so equal servers share the work evenly."""
        n = len(self.endpoints)
        best = None
        for offset in range(n):
            candidate = self.endpoints[(self._next + offset) % n]
            if best is None or candidate.active < best.active:
                best = candidate
        self._next = (self.endpoints.index(best) + 1) % n
        return best
