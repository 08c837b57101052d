"""A real OpenAI-compatible HTTP server on 127.0.0.1 (stdlib), with scripted answers, injected
429/500 errors and delays, so the real ``openai`` client path is exercised without a network.

It also misbehaves on demand, as real servers do: log-probabilities shifted by one token
(``score_mode="shift_next"``/``"shift_prev"``; ``"repeat"``: each token valued by the distribution
one position late, as llama-cpp-python does without a BOS token), nulls (``"null"``), ``echo``
ignored (``"no_echo"``), raw bodies such as truncated JSON or an HTML page with status 200
(``raw``), 429 storms with a ``Retry-After`` header (``fail`` + ``retry_after``), a slow server with
one slot (``slots=1`` + ``delay``), and ``/models`` descriptions (``models``) so that two URLs can
serve one model name with different weights.

Its completions endpoint is a word-level "language model": each whitespace-separated word is a
token; in a prompt asking to "Continue the count", a number continuing the count gets -0.05, any
other number -6 and a word starting with "Zebra" -12; other words get ``-0.5 / (1 + k)`` with ``k``
the ``[n]`` source lines in the prompt (more sources, likelier answer).

Tests use the ``fake_server`` fixture; ``python tests/_fake_llm_server.py --delay 0.05`` runs it in
a process of its own (as ``benchmarks/llm_calls.py`` does), prints its URL and serves until its
standard input closes.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

try:
    import pytest
except ImportError:  # run as a script in an environment without pytest
    pytest = None  # type: ignore[assignment]


def default_answer(messages: list[dict[str, str]]) -> str:
    """Scripted: an answer names how many sources were in context; a judge rates an answer by
    that number."""
    text = "\n".join(m["content"] for m in messages)
    if "Rating" in text:
        m = re.search(r"\nAnswer: answer citing (\d+)", text)
        return m.group(1) if m else "0"
    k = len(re.findall(r"^\[\d+\]", text, flags=re.M))
    return f"answer citing {k} sources"


COUNT_PROMPT = "Continue the count"


def word_logprobs(text: str, *, repeat: bool = False) -> tuple[list[int], list[float | None]]:
    """Offsets of the words of ``text`` and their true log-probabilities (``None`` for the first,
    which has no context). ``repeat``: each word is valued as the *next* word after itself (the
    distribution one position late, as llama-cpp-python's echo gives for a GGUF without BOS)."""
    offsets = [m.start() for m in re.finditer(r"\S+", text)]
    k = len(re.findall(r"^\[\d+\]", text, flags=re.M))
    values: list[float | None] = []
    for i, off in enumerate(offsets):
        if i == 0:
            values.append(None)
            continue
        end = offsets[i + 1] if i + 1 < len(offsets) else len(text)
        word = text[off:end].strip().strip(",.")
        prefix = text[:end] if repeat else text[:off]
        if COUNT_PROMPT in prefix and word.isdigit():
            numbers = re.findall(r"\d+", prefix)
            values.append(-0.05 if numbers and int(word) == int(numbers[-1]) + 1 else -6.0)
        elif COUNT_PROMPT in prefix and word.startswith("Zebra"):
            values.append(-12.0)
        else:
            values.append(-0.5 / (1 + k))
    return offsets, values


@dataclass
class FakeServer:
    """State of the fake server; tests script it and read its counters."""

    answer: Callable[[list[dict[str, str]]], str] = default_answer
    delay: float = 0.0
    prompt_tokens: int = 10  # usage reported by chat completions
    completion_tokens: int = 5
    fail: list[int] = field(default_factory=list)  # status codes returned by the next requests
    retry_after: str | None = None  # Retry-After header of a 429 (default: retry-after-ms 10)
    raw: list[tuple[int, str, bytes]] = field(default_factory=list)  # next bodies, sent as they are
    score_mode: str = "aligned"  # aligned, shift_next, shift_prev, repeat, null, no_echo, ...
    slots: int | None = None  # requests processed at once (the others wait their turn)
    models: list[dict[str, Any]] | None = None  # GET /models entries (None: 404)
    model_requests: int = 0
    times: list[float] = field(default_factory=list)  # when each POST arrived (monotonic)
    requests: int = 0
    chat_requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    _slots: threading.Semaphore | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.slots is not None:
            self._slots = threading.Semaphore(self.slots)

    def completion(self, prompt: str, model: str) -> dict[str, Any]:
        """The echo answer for ``prompt`` (with one generated word), misbehaving as scripted."""
        offsets, true = word_logprobs(prompt, repeat=self.score_mode == "repeat")
        generated = " ok"
        text = prompt + generated
        offsets = [*offsets, len(prompt)]
        true = [*true, -0.1]
        if self.score_mode == "shift_next":  # each token reports the next one's value
            values = [*true[1:], -1.0]
        elif self.score_mode == "shift_prev":  # each token reports the previous one's value
            values = [None, *true[:-1]]
        elif self.score_mode == "null":
            values = [None] * len(true)
        else:
            values = list(true)
        if self.score_mode == "no_echo":  # only the generated token, as llama-server does
            text, offsets, values = generated, [0], [-0.1]
        ends = [*offsets[1:], len(text)]
        logprobs: dict[str, Any] | None = {
            "tokens": [text[a:b] for a, b in zip(offsets, ends, strict=True)],
            "token_logprobs": values,
            "top_logprobs": None,
            "text_offset": offsets,
        }
        if self.score_mode == "no_logprobs":
            logprobs = None
        return {
            "id": "cmpl-test",
            "object": "text_completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": 0, "text": text, "finish_reason": "length", "logprobs": logprobs}
            ],
            "usage": {
                "prompt_tokens": len(offsets) - 1,
                "completion_tokens": 1,
                "total_tokens": len(offsets),
            },
        }

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.bodies.append(body)
            self.times.append(time.monotonic())
            status = self.fail.pop(0) if self.fail else 200
        if self._slots is not None:
            self._slots.acquire()
        try:
            if self.delay:
                time.sleep(self.delay)
            if status != 200:
                return status, {"error": {"message": f"injected {status}", "type": "test"}}
            if path.endswith("/chat/completions"):
                with self.lock:
                    self.chat_requests += 1
                text = self.answer(body["messages"])
                return 200, {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": self.prompt_tokens,
                        "completion_tokens": self.completion_tokens,
                        "total_tokens": self.prompt_tokens + self.completion_tokens,
                    },
                }
            if path.endswith("/completions"):  # echo scoring, word by word
                return 200, self.completion(body["prompt"], body["model"])
            return 404, {"error": {"message": f"no route {path}"}}
        finally:
            if self._slots is not None:
                self._slots.release()
            with self.lock:
                self.in_flight -= 1


@contextlib.contextmanager
def serve(state: FakeServer | None = None) -> Iterator[FakeServer]:
    """Run the fake server on a free port of 127.0.0.1 (``state.url`` is its ``/v1`` base URL)."""
    state = state or FakeServer()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms ACK stall

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            with state.lock:
                raw = state.raw.pop(0) if state.raw else None
            if raw is not None:
                with state.lock:
                    state.requests += 1
                self._send(raw[0], raw[1], raw[2])
                return
            status, payload = state.handle(self.path, body)
            self._send(status, "application/json", json.dumps(payload).encode())

        def do_GET(self) -> None:
            with state.lock:
                state.model_requests += 1
            if self.path.endswith("/models") and state.models is not None:
                data = {"object": "list", "data": state.models}
                self._send(200, "application/json", json.dumps(data).encode())
            else:
                self._send(404, "application/json", b'{"error": {"message": "no route"}}')

        def _send(self, status: int, content_type: str, data: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    if state.retry_after is None:
                        self.send_header("retry-after-ms", "10")
                    else:
                        self.send_header("retry-after", state.retry_after)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # bursts of 64+ concurrent connections

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


if pytest is not None:

    @pytest.fixture
    def fake_server() -> Iterator[FakeServer]:
        with serve() as state:
            yield state


def main(argv: list[str] | None = None) -> int:
    """Serve until standard input closes; print the base URL first."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="the fake OpenAI-compatible server")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per request")
    args = parser.parse_args(argv)
    with serve(FakeServer(delay=args.delay)) as state:
        print(state.url, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
