"""OpenAI-compatible chat completions over HTTP (vLLM, SGLang, `transformers serve`, hosted APIs).

A streaming pool: a background thread runs an asyncio loop with `concurrency` workers, each with its own
httpx client; the caller's thread pulls requests from its iterable only while fewer than `2 * concurrency`
are outstanding, so every worker always has work queued behind it and memory stays bounded however long
the input is. Results are yielded in completion order. A request waiting out a retry backoff sits on a
timer, not on a worker, so one slow retry never idles the pool.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import os
import queue
import random
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
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
    # consecutive failed attempts and the monotonic time before which it is rested: a dead server refuses at
    # once, so it always looks least loaded; without resting it would draw every retry of every request
    failures: int = 0
    rested_until: float = 0.0


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
    cap = backoff_cap(attempt, base_s, max_s)
    return rng.uniform(cap / 2, cap)


def backoff_cap(attempt: int, base_s: float, max_s: float) -> float:
    return min(max_s, base_s * (2 ** (attempt - 1)))


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
        # The key is read here, per run, and lives only in the clients' default headers.
        key = os.environ.get(self.api_key_env)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="compass-openai-pool", daemon=True)
        thread.start()
        done: queue.Queue[GenResult | BaseException] = queue.Queue()
        pool = asyncio.run_coroutine_threadsafe(self._open(key, done), loop).result()
        window = 2 * self.concurrency  # queued work behind every worker, so a finished one starts the next at once
        outstanding = 0
        try:
            source = iter(requests)
            exhausted = False
            while True:
                while not exhausted and outstanding < window:
                    try:
                        request = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    loop.call_soon_threadsafe(pool.jobs.put_nowait, _Job(request, self._payload(request)))
                    outstanding += 1
                if outstanding == 0:
                    return
                item = done.get()
                if isinstance(item, BaseException):
                    raise item  # a bug in a worker: surface it rather than wait forever for its result
                outstanding -= 1
                yield item
        finally:
            asyncio.run_coroutine_threadsafe(pool.close(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    def _payload(self, request: GenRequest) -> bytes:
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
        return json.dumps(body, ensure_ascii=False).encode()

    # --- the async pool --------------------------------------------------------------------------------

    async def _open(self, key: str | None, done: queue.Queue) -> _Pool:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # Loading the CA bundle costs ~45 ms; plain-http endpoints (a local vLLM) never use TLS at all.
        if any(u.startswith("https://") for u in self.base_urls):
            tls = httpx.create_ssl_context()
        else:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        pool = _Pool([_Endpoint(f"{u}/chat/completions") for u in self.base_urls], key, done, headers, tls)
        loop = asyncio.get_running_loop()
        pool.workers = [loop.create_task(self._worker(pool)) for _ in range(self.concurrency)]
        return pool

    def _client(self, pool: _Pool) -> httpx.AsyncClient:
        # One client (one keep-alive connection per endpoint) per worker, not one shared pool: httpcore's
        # shared pool rescans every connection for every connection on each request, which cost 5 ms of CPU
        # per request at 64 in flight (bench/distill_client.py); private clients cost under 1 ms.
        n = len(self.base_urls)
        client = httpx.AsyncClient(
            headers=pool.headers, verify=pool.tls,
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 30.0)),
        )
        pool.clients.append(client)
        return client

    async def _worker(self, pool: _Pool) -> None:
        # built here, not up front: the first workers are already sending while the last ones are built
        client = self._client(pool)
        while True:
            job = await pool.jobs.get()
            try:
                result = await self._try(pool, client, job)
            except asyncio.CancelledError:
                raise
            except BaseException as err:  # not a request failure (those are results): a bug, handed to the caller
                pool.done.put(err)
                raise
            if result is not None:
                pool.done.put(result)

    async def _try(self, pool: _Pool, client: httpx.AsyncClient, job: _Job) -> GenResult | None:
        """One attempt; a result when the job is finished, None when it was scheduled for a retry."""
        request = job.request
        job.attempts += 1
        endpoint = pool.pick()
        endpoint.active += 1
        try:
            text, tokens, finish = await self._attempt(client, endpoint.url, job.payload)
        except _Fatal as err:
            return self._failed(pool, job, str(err))
        except _Retryable as err:
            endpoint.failures += 1
            # rested for the cap of its backoff (no jitter): never shorter than this job's retry delay (the
            # endpoint's failure count is at least the job's attempt count), so the retry goes elsewhere
            endpoint.rested_until = time.monotonic() + backoff_cap(endpoint.failures, self.backoff_base_s,
                                                                   self.backoff_max_s)
            if job.attempts > self.max_retries:
                return self._failed(pool, job, f"{err} (gave up after {job.attempts} attempts)")
            delay = backoff_delay(job.attempts, self.backoff_base_s, self.backoff_max_s, pool.rng)
            if err.retry_after is not None:
                # the server said when; wait at least that long, but never beyond our own ceiling
                delay = min(max(delay, err.retry_after), max(self.backoff_max_s, delay))
            # the job waits out its backoff off the workers, so a retrying request never idles a worker
            pool.retry_later(job, delay)
            return None
        finally:
            endpoint.active -= 1
        endpoint.failures = 0
        return GenResult(request.id, text, None, job.attempts, tokens, time.perf_counter() - job.t0, finish, request.meta)

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

    def _failed(self, pool: _Pool, job: _Job, message: str) -> GenResult:
        if pool.key:
            message = message.replace(pool.key, "***")  # a server echoing our headers must not leak the key
        request = job.request
        return GenResult(request.id, None, message, job.attempts, None, time.perf_counter() - job.t0, None, request.meta)


class _Job:
    def __init__(self, request: GenRequest, payload: bytes):
        self.request = request
        self.payload = payload
        self.attempts = 0
        self.t0 = time.perf_counter()


class _Pool:
    """State owned by the event loop thread: job queue, workers and their clients, endpoints, jitter RNG."""

    def __init__(self, endpoints: list[_Endpoint], key: str | None, done: queue.Queue, headers: dict[str, str],
                 tls: ssl.SSLContext):
        self.jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self.headers = headers
        self.tls = tls
        self.clients: list[httpx.AsyncClient] = []
        self.workers: list[asyncio.Task] = []
        self.retries: dict[int, asyncio.TimerHandle] = {}  # id(job) -> its pending retry
        self.endpoints = endpoints
        self.key = key
        self.done = done
        self.rng = random.Random()
        self._next = 0

    def retry_later(self, job: _Job, delay: float) -> None:
        self.retries[id(job)] = asyncio.get_running_loop().call_later(delay, self._requeue, job)

    def _requeue(self, job: _Job) -> None:
        del self.retries[id(job)]
        self.jobs.put_nowait(job)

    def pick(self) -> _Endpoint:
        """Least-loaded endpoint among those not rested after a failure (when all are, the one whose rest ends
        first); ties go round-robin so equal servers share the work evenly."""
        n = len(self.endpoints)
        now = time.monotonic()
        ready = {id(e) for e in self.endpoints if e.rested_until <= now}
        if not ready:
            ready = {id(min(self.endpoints, key=lambda e: e.rested_until))}
        best = None
        for offset in range(n):
            candidate = self.endpoints[(self._next + offset) % n]
            if id(candidate) in ready and (best is None or candidate.active < best.active):
                best = candidate
        self._next = (self.endpoints.index(best) + 1) % n
        return best

    async def close(self) -> None:
        for handle in self.retries.values():
            handle.cancel()
        for task in self.workers:
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        for client in self.clients:
            await client.aclose()
