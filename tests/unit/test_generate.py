"""Generation backends: the OpenAI-compatible pool against a scripted server on 127.0.0.1 (real HTTP, real
sockets), the reference renderer, and batched local generation with the tiny LLM."""
from __future__ import annotations

import random
import threading
import time

import pytest

from compass.errors import CompassError
from compass.generate import (
    GenRequest,
    OpenAIBackend,
    OpenAISettings,
    ReferenceBackend,
    TransformersBackend,
    TransformersSettings,
    make_backend,
)
from compass.generate.openai_backend import backoff_delay, parse_retry_after
from support.scripted_server import ScriptedServer
from compass.records import Problem


def req(i: int, **kw) -> GenRequest:
    return GenRequest(id=f"r{i}", messages=[{"role": "user", "content": f"question {i}"}], **kw)


def echo(body: dict) -> str:
    return "echo: " + body["messages"][-1]["content"]


def fast_backend(server: ScriptedServer, **kw) -> OpenAIBackend:
    settings = dict(concurrency=4, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0)
    settings.update(kw)
    return OpenAIBackend([server.base_url], "scripted", **settings)


# --- pure helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (None, None), ("3", 3.0), ("0.5", 0.5), (" 2 ", 2.0), ("-4", 0.0), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # 10 s after `now` below
    ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),   # a date in the past means now
])
def test_parse_retry_after(value, expected):
    now = 1445412480.0  # 2015-10-21 07:28:00 GMT
    assert parse_retry_after(value, now=now) == expected


def test_backoff_is_exponential_with_jitter_and_capped():
    rng = random.Random(0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (7, 10.0), (30, 10.0)]:
        delays = [backoff_delay(attempt, 1.0, 10.0, rng) for _ in range(200)]
        assert cap / 2 <= min(delays) and max(delays) <= cap
        assert max(delays) - min(delays) > cap / 4  # actually jittered


# --- OpenAI-compatible pool -----------------------------------------------------------------------------


def test_pool_keeps_every_slot_busy_and_reads_input_lazily():
    pulled = []

    def source():
        for i in range(120):
            pulled.append(i)
            yield req(i)

    with ScriptedServer(echo, latency_s=0.05, slots=64) as server:
        backend = fast_backend(server, concurrency=8)
        results = backend.generate(source())
        first = next(results)
        # bounded memory: only the window (2 x concurrency) was taken from the input when the first came back
        assert len(pulled) <= 2 * 8 + 1
        rest = list(results)
    by_id = {r.id: r for r in [first, *rest]}
    assert sorted(by_id) == sorted(f"r{i}" for i in range(120))
    assert all(by_id[f"r{i}"].text == f"echo: question {i}" and by_id[f"r{i}"].attempts == 1 for i in range(120))
    assert server.max_active == 8  # never more than `concurrency`, and every slot was used


def test_results_come_in_completion_order():
    def latency(body):  # the first request is slow, the rest are quick
        return 0.6 if body["messages"][-1]["content"] == "question 0" else 0.01

    with ScriptedServer(echo, latency_s=latency) as server:
        t0 = time.perf_counter()
        order = [(r.id, time.perf_counter() - t0) for r in fast_backend(server, concurrency=8).generate(req(i) for i in range(6))]
    assert order[-1][0] == "r0" and sorted(i for i, _ in order[:-1]) == [f"r{i}" for i in range(1, 6)]
    assert all(t < 0.5 for _, t in order[:-1])  # the quick ones were not held back behind the slow one
    assert order[-1][1] >= 0.6


def test_retries_through_every_fault_kind_then_succeeds():
    faults = {1: "500", 2: "429", 3: "drop", 4: "truncate", 5: "slow"}
    with ScriptedServer(echo, faults=faults, slow_s=3.0, retry_after_s=0.01) as server:
        backend = fast_backend(server, concurrency=3, max_retries=5, timeout_s=0.4)
        results = sorted(backend.generate(req(i) for i in range(5)), key=lambda r: r.id)
    assert [(r.id, r.text, r.error, r.attempts) for r in results] == [
        (f"r{i}", f"echo: question {i}", None, 6) for i in range(5)
    ]
    assert all(r.output_tokens == 3 and r.finish_reason == "stop" for r in results)


def test_gives_up_after_max_retries_with_a_one_line_error():
    with ScriptedServer(echo, faults={1: "500", 2: "500", 3: "500"}) as server:
        [result] = list(fast_backend(server, max_retries=2).generate([req(0)]))
    assert result.text is None and result.attempts == 3 and result.output_tokens is None
    assert result.error.startswith("HTTP 500 from http://127.0.0.1:")
    assert result.error.endswith("(gave up after 3 attempts)") and "\n" not in result.error


def test_client_errors_are_not_retried():
    with ScriptedServer(echo, faults={1: "400"}) as server:
        [result] = list(fast_backend(server).generate([req(0)]))
    assert result.attempts == 1 and result.text is None and "HTTP 400" in result.error
    assert sum(server.arrivals.values()) == 1


def test_retry_after_is_respected():
    with ScriptedServer(echo, faults={1: "429"}, retry_after_s=0.5) as server:
        [result] = list(fast_backend(server, backoff_base_s=0.01, backoff_max_s=2.0).generate([req(0)]))
    assert result.ok and result.attempts == 2
    assert result.latency_s >= 0.5


def test_per_request_timeout_bounds_a_hanging_answer():
    with ScriptedServer(echo, faults={1: "slow", 2: "slow"}, slow_s=5.0) as server:
        t0 = time.perf_counter()
        [result] = list(fast_backend(server, timeout_s=0.3, max_retries=1).generate([req(0)]))
        elapsed = time.perf_counter() - t0
    assert result.text is None and result.attempts == 2
    assert result.error.startswith("timeout after 0.3s") and elapsed < 2.0


def test_request_body_carries_sampling_images_and_extra_body():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages = [{"role": "system", "content": "sys"},
                {"role": "user", "content": [image, {"type": "text", "text": "what is shown?"}]}]
    request = GenRequest("img", messages, max_tokens=17, temperature=0.7, top_p=0.9, seed=123, meta={"not": "sent"})
    with ScriptedServer(lambda body: "seen") as server:
        backend = fast_backend(server, extra_body={"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}})
        [result] = list(backend.generate([request]))
    assert result.text == "seen" and result.meta == {"not": "sent"}
    assert server.requests_seen == [{
        "model": "scripted", "messages": messages, "max_tokens": 17, "temperature": 0.7, "top_p": 0.9,
        "top_k": 20, "chat_template_kwargs": {"enable_thinking": False}, "seed": 123,
    }]


def test_api_key_comes_from_the_named_env_var_and_never_leaks(monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("COMPASS_TEST_KEY", secret)

    def leaky(body):  # a server that would echo our credentials back in an error
        return "x"

    with ScriptedServer(leaky, faults={1: "400"}) as server:
        backend = fast_backend(server, api_key_env="COMPASS_TEST_KEY")
        [failed] = list(backend.generate([req(0)]))
        [ok] = list(backend.generate([req(0)]))
    assert [h["authorization"] for h in server.headers_seen] == [f"Bearer {secret}"] * 2
    assert ok.ok and secret not in failed.error and secret not in repr(backend.__dict__)
    assert secret not in OpenAISettings(api_key_env="COMPASS_TEST_KEY").model_dump_json()


def test_no_authorization_header_without_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ScriptedServer(echo) as server:
        list(fast_backend(server).generate([req(0)]))
    assert "authorization" not in server.headers_seen[0]


def test_several_base_urls_share_the_load():
    with ScriptedServer(echo, latency_s=0.02) as a, ScriptedServer(echo, latency_s=0.02) as b:
        backend = OpenAIBackend([a.base_url, b.base_url + "/"], "scripted", concurrency=8)
        results = list(backend.generate(req(i) for i in range(80)))
    assert sorted(r.id for r in results) == sorted(f"r{i}" for i in range(80))
    assert a.completed + b.completed == 80 and min(a.completed, b.completed) >= 30


def test_a_dead_endpoint_is_survived_by_retrying_elsewhere():
    """A failing endpoint is rested (its backoff cap, doubling with each failure in a row), so it no longer draws
    the retries: a server that fails at once always looks least loaded. Before resting, the failing server here got
    most of the attempts; now a handful, and every request is answered by the healthy one."""
    with ScriptedServer(echo) as alive, ScriptedServer(echo, faults={k: "500" for k in range(1, 50)}) as failing:
        backend = OpenAIBackend([failing.base_url, alive.base_url], "scripted", concurrency=4,
                                backoff_base_s=0.01, backoff_max_s=2.0, max_retries=6)
        results = list(backend.generate(req(i) for i in range(40)))
    assert [r.error for r in results if not r.ok] == [] and alive.completed == 40
    assert len(failing.requests_seen) <= 12, len(failing.requests_seen)


def test_stopping_early_releases_the_pool_thread():
    with ScriptedServer(echo, latency_s=0.01) as server:
        results = fast_backend(server, concurrency=4).generate(req(i) for i in range(1000))
        taken = [next(results) for _ in range(3)]
        results.close()
    assert len(taken) == 3
    assert not [t for t in threading.enumerate() if t.name == "compass-openai-pool"]


def test_misconfiguration_fails_fast():
    with pytest.raises(CompassError, match="base_urls is empty"):
        OpenAIBackend([], "m")
    with pytest.raises(CompassError, match="must start with http"):
        OpenAIBackend(["localhost:8000/v1"], "m")
    with pytest.raises(CompassError, match=r"extra_body may not set \['max_tokens'\]"):
        OpenAIBackend(["http://x/v1"], "m", extra_body={"max_tokens": 3})
    with pytest.raises(CompassError, match="needs openai.model"):
        make_backend("openai", OpenAISettings(), TransformersSettings())
    with pytest.raises(CompassError, match="needs transformers.model_dir"):
        make_backend("transformers", OpenAISettings(), TransformersSettings())
    with pytest.raises(CompassError, match="not a model directory"):
        TransformersBackend("/nonexistent")


# --- reference ------------------------------------------------------------------------------------------


def test_reference_backend_renders_the_dataset_solution():
    solved = Problem(id="p1", source="toy", question="What is 2+3?", reference_answer="5", reference_solution="2+3 = 5.")
    unsolved = Problem(id="p2", source="toy", question="?", reference_answer="1")
    results = list(ReferenceBackend().generate([
        GenRequest("p1#0", [], meta={"problem": solved}), GenRequest("p2#0", [], meta={"problem": unsolved}),
    ]))
    assert results[0].text == (
        "<Problem>\nWhat is 2+3?\n</Problem>\n\n<Thinking>\n2+3 = 5.\n</Thinking>\n\n<Answer>\n\\boxed{5}\n</Answer>"
    )
    assert results[1].text is None and results[1].error == "problem 'p2' has no reference_solution to render"
    with pytest.raises(CompassError, match="carries no Problem"):
        list(ReferenceBackend().generate([GenRequest("x", [])]))


# --- local transformers ---------------------------------------------------------------------------------


def test_transformers_backend_batches_with_left_padding(tiny_models):
    prompts = ["2+2?", "A much longer question about the sum of many numbers, 1 2 3 4 5 6 7 8 9?", "x", "今日は？", "9*9"]
    requests = [GenRequest(f"q{i}", [{"role": "system", "content": "math"}, {"role": "user", "content": p}],
                           max_tokens=6, temperature=0.0) for i, p in enumerate(prompts)]
    batched = list(TransformersBackend(tiny_models.llm, batch_size=3).generate(requests))
    alone = [next(TransformersBackend(tiny_models.llm, batch_size=1).generate([r])) for r in requests[:2]]
    assert [r.id for r in batched] == [f"q{i}" for i in range(5)]  # input order
    # greedy output of a prompt does not depend on the padding its batch neighbours forced on it
    assert [r.text for r in batched[:2]] == [r.text for r in alone]
    assert all(r.ok and 1 <= r.output_tokens <= 6 and r.finish_reason in ("stop", "length") for r in batched)
    with pytest.raises(CompassError, match="text-only"):
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        list(TransformersBackend(tiny_models.llm).generate([GenRequest("i", [{"role": "user", "content": [image]}])]))


def test_sampling_batches_split_on_size_and_on_changed_settings():
    from compass.generate.base import GenRequest, sampling_batches

    def req(i, temperature=0.0):
        return GenRequest(id=str(i), messages=[], max_tokens=8, temperature=temperature, top_p=1.0, seed=None)

    requests = [req(0), req(1), req(2), req(3, 0.7), req(4, 0.7), req(5)]
    batches = [[r.id for r in batch] for batch in sampling_batches(iter(requests), 2)]
    assert batches == [["0", "1"], ["2"], ["3", "4"], ["5"]]
