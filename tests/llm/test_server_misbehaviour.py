"""Each way a real OpenAI-compatible server was seen to misbehave, reproduced on the loopback
server (tests/_fake_llm_server.py), and what coreopt does about it: a clear error naming the
server's problem, never a silently wrong or cached value."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

pytest.importorskip("openai")

from _fake_llm_server import FakeServer, serve

from coreopt.llm import (
    LLM,
    BadScoresError,
    CacheKey,
    Completion,
    LLMError,
    OpenAIBackend,
    SQLiteCache,
)
from coreopt.llm.echo import continuation_scores
from coreopt.llm.prompt import render_chatml

PROMPT = [{"role": "system", "content": "s"}, {"role": "user", "content": "[1] a\nQuestion: q"}]


def make(server: FakeServer, cache: object = False, **kw: object) -> LLM:
    backend_kw = {k: kw.pop(k) for k in ("timeout",) if k in kw}
    backend = OpenAIBackend("fake", base_url=server.url, api_key="k", **backend_kw)  # type: ignore[arg-type]
    return LLM(backend, cache=cache, retry_delay=0.01, **kw)  # type: ignore[arg-type]


# -- scores that cannot be silently wrong ---------------------------------------------------------


def test_aligned_echo_scores_the_chat_formatted_prompt(fake_server) -> None:
    llm = make(fake_server)
    out = llm.score(PROMPT, "two words")
    assert out.logprob == pytest.approx(2 * -0.25)  # one [n] source: -0.5 / 2 per word
    sent = fake_server.bodies[-1]["prompt"]
    assert sent == render_chatml(PROMPT) + "two words"  # the same ChatML the embedded model sees
    assert sent.startswith("<|im_start|>system\ns<|im_end|>\n<|im_start|>user\n")


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("null", "log-probability None"),
        ("no_echo", "ignored echo=True"),
        ("no_logprobs", "no prompt log-probabilities"),
    ],
)
def test_unusable_echo_answers_raise_and_are_never_cached(fake_server, tmp_path, mode, match):
    fake_server.score_mode = mode
    llm = make(fake_server, cache=tmp_path / "c.sqlite")
    with pytest.raises(BadScoresError, match=match) as info:
        llm.score(PROMPT, "two words")
    assert fake_server.url.removesuffix("/v1") in str(info.value)  # names the server
    assert "--scoring judge" in str(info.value)  # and a fix
    assert fake_server.requests == 1  # a server's misbehaviour is not retried
    assert len(SQLiteCache(tmp_path / "c.sqlite")) == 0
    fake_server.score_mode = "aligned"  # the server fixed: the value is paid for and correct
    assert llm.score(PROMPT, "two words").logprob == pytest.approx(-0.5)


def test_a_backend_returning_an_impossible_log_probability_is_not_cached(tmp_path) -> None:
    from coreopt.llm import CallableBackend

    llm = LLM(CallableBackend(None, lambda p, c: 0.7, model="bad"), cache=tmp_path / "c.sqlite")
    with pytest.raises(BadScoresError, match="finite number <= 0"):
        llm.score("q", "a")
    llm2 = LLM(CallableBackend(None, lambda p, c: Completion(text=c)), cache=tmp_path / "c.sqlite")
    with pytest.raises(BadScoresError, match="None"):
        llm2.score("q", "a")
    assert len(SQLiteCache(tmp_path / "c.sqlite")) == 0


def test_coverage_check_on_hand_made_answers() -> None:
    sent = "prompt: answer here"
    start = sent.index("answer")
    # tokens "prompt:", " answer", " here" + generated "!" (offsets into the echoed text)
    ok = continuation_scores(
        sent, "answer here", sent + "!", [0, 7, 14, 19], [None, -1.0, -2.0, -0.5], [], server="s"
    )
    assert ok.logprob == pytest.approx(-3.0)  # " answer" straddles the boundary: counted whole
    assert ok.span == (1, 3)
    assert ok.start == start
    with pytest.raises(BadScoresError, match="not increasing"):
        continuation_scores(sent, "answer here", sent, [0, 14, 7], [None, -1, -2], [], server="s")
    with pytest.raises(BadScoresError, match="cover characters 10-19"):  # "an" has no token
        continuation_scores(sent, "answer here", sent, [10, 14], [-1.0, -1.0], [], server="s")
    with pytest.raises(BadScoresError, match="finite number"):
        continuation_scores(sent, "answer here", sent, [0, 7, 14], [None, -1, 0.5], [], server="s")
    with pytest.raises(BadScoresError, match="3 token offsets for 2"):
        continuation_scores(sent, "answer here", sent, [0, 7, 14], [None, -1], [], server="s")


def test_offsets_of_another_rendering_are_read_on_the_tokens_texts() -> None:
    """A server whose offsets skip special tokens (detokenized to "") while its echoed text keeps
    them: the tokens' own texts, joined, place the continuation."""
    sent = "<s>prompt: answer here"
    tokens = ["", "prompt:", " answer", " here", "!"]
    out = continuation_scores(
        sent,
        "answer here",
        sent + "!",
        [0, 0, 7, 14, 19],
        [None, None, -1, -2, -0.5],
        tokens,
        server="s",
    )
    assert out.logprob == pytest.approx(-3.0)
    with pytest.raises(BadScoresError, match=r"placed token 1 .* offsets point elsewhere"):
        continuation_scores(
            sent,
            "answer here",
            sent,
            [3, 10, 17],
            [None, -1, -2],
            ["prompt:", " XXXXXX", " here"],
            server="s",
        )


# -- the self-test -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shift_next", "shift_prev", "repeat"])
def test_self_test_refuses_shifted_log_probabilities(fake_server, mode) -> None:
    fake_server.score_mode = mode
    llm = make(fake_server)
    with pytest.raises(BadScoresError, match="failed the log-probability self-test") as info:
        llm.verify_scoring()
    msg = str(info.value)
    assert fake_server.url in msg
    assert re.search("shifted|one position late", msg)
    assert "BOS" in msg
    assert "--scoring judge" in msg
    assert llm.usage.calls == 2
    assert not llm.verified


def test_self_test_passes_once_per_server_and_model(tmp_path) -> None:
    path = tmp_path / "c.sqlite"
    with serve(FakeServer()) as a, serve(FakeServer()) as b:
        report = make(a, cache=path).verify_scoring()
        assert report.passed
        assert report.sure - report.wrong > 10
        assert report.prompt_gap == 0.0
        assert report.first_wrong == -12.0
        assert a.requests == 2
        assert make(a, cache=path).verify_scoring() is None  # remembered in the cache file
        assert a.requests == 2
        make(b, cache=path).verify_scoring()  # another server: tested again
        assert b.requests == 2
        no_cache = make(a)
        no_cache.verify_scoring()
        no_cache.verify_scoring()  # remembered in the object
        assert a.requests == 4


# -- cache keys carry the server's identity ------------------------------------------------------


def test_two_urls_with_one_model_name_do_not_share_values(tmp_path) -> None:
    path = tmp_path / "c.sqlite"
    with serve(FakeServer()) as a, serve(FakeServer()) as b:
        make(a, cache=path).score(PROMPT, "two words")
        make(a, cache=path).score(PROMPT, "two words")
        assert a.requests == 1  # the same server: cached
        make(b, cache=path).score(PROMPT, "two words")
        assert b.requests == 1  # same model name, another URL: paid again
    rows = SQLiteCache(path).rows()
    assert {r["backend"] for r in rows} == {f"openai@{a.url}", f"openai@{b.url}"}


def test_weights_fingerprint_from_models_keys_the_cache(tmp_path) -> None:
    path = tmp_path / "c.sqlite"
    with serve(FakeServer(models=[{"id": "fake", "object": "model", "root": "a.gguf"}])) as s:
        llm = make(s, cache=path)
        llm.score(PROMPT, "two words")
        assert "#" in llm.identity
        assert s.model_requests == 1
        make(s, cache=path).score(PROMPT, "two words")
        assert s.requests == 1
        s.models = [{"id": "fake", "object": "model", "root": "b.gguf"}]  # other weights, same URL
        make(s, cache=path).score(PROMPT, "two words")
        assert s.requests == 2


def test_rows_of_old_cache_files_stay_readable_but_are_not_reused(fake_server, tmp_path) -> None:
    path = tmp_path / "c.sqlite"
    old = SQLiteCache(path)  # a row as written before keys carried the server
    llm = make(fake_server, cache=old)
    k = llm.key("generate", template="t")
    old.put(CacheKey("openai", k.model, k.template, k.coalition, k.params, k.kind), Completion("x"))
    assert len(old) == 1
    assert old.rows()[0]["backend"] == "openai"
    assert llm.generate("hi", template="t").text == "answer citing 0 sources"
    assert fake_server.requests == 1


# -- malformed answers, retries, slow servers ----------------------------------------------------

GOOD = {
    "id": "c",
    "object": "chat.completion",
    "created": 0,
    "model": "fake",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
TRUNCATED = (200, "application/json", json.dumps(GOOD).encode()[:40])
HTML = (200, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>")


@pytest.mark.parametrize("body", [TRUNCATED, HTML], ids=["truncated-json", "html"])
def test_malformed_200_answers_are_retried_then_raised(fake_server, body) -> None:
    fake_server.raw = [body]
    llm = make(fake_server, retries=2)
    assert llm.generate("hi").text == "answer citing 0 sources"  # retried, then fine
    assert (llm.usage.calls, llm.usage.retries) == (2, 1)
    fake_server.raw = [body] * 3
    with pytest.raises(LLMError, match=r"failed after 3 HTTP request\(s\): Malformed") as info:
        llm.generate("other")
    assert "127.0.0.1" in str(info.value)


def test_429_storm_honours_retry_after_and_halves_concurrency(fake_server) -> None:
    fake_server.fail = [429] * 3
    fake_server.retry_after = "0.2"
    llm = make(fake_server, retries=5)
    assert llm.generate("hi").text == "answer citing 0 sources"
    gaps = [b - a for a, b in zip(fake_server.times, fake_server.times[1:], strict=False)]
    assert len(gaps) == 3
    assert min(gaps) >= 0.19
    assert (llm.usage.calls, llm.usage.retries) == (4, 3)
    assert llm.limiter.epoch == 3  # each 429 halved the adaptive limit (down to 1) ...
    assert llm.limiter.limit == 2  # ... and the answer after the storm let it grow again


def test_slow_single_slot_server_gets_no_more_requests_than_it_answers_in_time() -> None:
    """One slot, 0.15 s per request, a 1 s timeout, up to 16 calls allowed in flight: the adaptive
    limit keeps the queue short enough that nothing times out and nothing is sent twice."""
    with serve(FakeServer(slots=1, delay=0.15)) as server:
        llm = make(server, max_concurrency=16, timeout=1.0, retries=3)

        async def run() -> list[str]:
            outs = await asyncio.gather(*(llm.agenerate(f"q{i}") for i in range(20)))
            return [o.text for o in outs]

        assert len(asyncio.run(run())) == 20
    assert llm.usage.timeouts == 0
    assert llm.usage.retries == 0
    assert server.requests == 20  # nothing abandoned and sent again
    assert server.max_in_flight * 0.15 < 1.0  # the queue at the server stays within the timeout
    assert llm.limiter.peak <= 6


def test_a_dead_server_is_named_as_such() -> None:
    with serve(FakeServer()) as server:
        url = server.url
    llm = LLM(OpenAIBackend("fake", base_url=url, api_key="k"), cache=False, retries=1)
    with pytest.raises(LLMError, match=r"after 2 HTTP request\(s\).*is it running\?"):
        llm.generate("hi")
