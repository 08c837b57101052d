"""A real OpenAI-compatible HTTP server on 127.0.0.1 (stdlib), with scripted answers, injected
429/500 errors and delays, so the real ``openai`` client path is exercised without a network.

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


@dataclass
class FakeServer:
    """State of the fake server; tests script it and read its counters."""

    answer: Callable[[list[dict[str, str]]], str] = default_answer
    delay: float = 0.0
    prompt_tokens: int = 10  # usage reported by chat completions
    completion_tokens: int = 5
    fail: list[int] = field(default_factory=list)  # status codes returned by the next requests
    requests: int = 0
    chat_requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.bodies.append(body)
            status = self.fail.pop(0) if self.fail else 200
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
            if path.endswith("/completions"):  # echo scoring: -0.5 per word of the continuation
                prompt = body["prompt"]
                words = re.finditer(r"\S+", prompt)
                offsets = [m.start() for m in words]
                k = len(re.findall(r"^\[\d+\]", prompt, flags=re.M))
                lps = [-0.5 / (1 + k) for _ in offsets]
                return 200, {
                    "id": "cmpl-test",
                    "object": "text_completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "text": prompt,
                            "finish_reason": "length",
                            "logprobs": {
                                "tokens": [prompt[o : o + 1] for o in offsets],
                                "token_logprobs": lps,
                                "top_logprobs": None,
                                "text_offset": offsets,
                            },
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(offsets),
                        "completion_tokens": 1,
                        "total_tokens": len(offsets) + 1,
                    },
                }
            return 404, {"error": {"message": f"no route {path}"}}
        finally:
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
            status, payload = state.handle(self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("retry-after-ms", "10")
            self.end_headers()
            self.wfile.write(data)

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
