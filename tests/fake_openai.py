"""A fake OpenAI-compatible server for fault tests: real HTTP on 127.0.0.1,
in a thread, scripted per request (status, headers, body, delay). Only for
what the real vLLM server cannot do on demand: failures and odd replies."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; str -> text; None -> the default for the path
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


def top_logprobs_reply(entries: list[tuple[str, float]], *, prompt_tokens: int = 17) -> dict[str, Any]:
    tops = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in entries]
    return {
        "id": "fake",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": entries[0][0]},
            "logprobs": {"content": [{**tops[0], "top_logprobs": tops}]},
            "finish_reason": "length",
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
    }


DEFAULT_JUDGE = top_logprobs_reply([("Yes", math.log(0.6)), ("No", math.log(0.3)), (" yes", math.log(0.05))])
DEFAULT_TEXT = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": " Paris.\n"}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 3},
}


class FakeServer:
    """Answers POSTs from a per-path script of :class:`Reply`, then defaults."""

    def __init__(self, responder: Callable[[str, dict[str, Any]], Reply | None] | None = None) -> None:
        self.responder = responder  # decides from the request when the script is empty
        self.script: dict[str, deque[Reply]] = {}
        self.seen: list[Seen] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def push(self, path: str, *replies: Reply) -> None:
        self.script.setdefault(path, deque()).extend(replies)

    def count(self, path: str = "/v1/chat/completions") -> int:
        return sum(1 for s in self.seen if s.path == path)

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, path: str, body: dict[str, Any]) -> Reply:
        with self._lock:
            queue = self.script.get(path)
            if queue:
                return queue.popleft()
        if self.responder is not None and (reply := self.responder(path, body)) is not None:
            return reply
        if path == "/v1/chat/completions":
            return Reply(body=DEFAULT_JUDGE if body.get("logprobs") else DEFAULT_TEXT)
        return Reply(404, {"detail": "Not Found"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw or b"{}")
                with fake._lock:
                    fake.seen.append(Seen(self.path, body, dict(self.headers.items())))
                    fake.active += 1
                    fake.max_active = max(fake.max_active, fake.active)
                try:
                    reply = fake._next(self.path, body)
                    time.sleep(reply.delay)
                    payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                    data = payload.encode()
                    self.send_response(reply.status)
                    ctype = "text/plain" if isinstance(reply.body, str) else "application/json"
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)
                finally:
                    with fake._lock:
                        fake.active -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture
def fake2() -> Iterator[FakeServer]:
    server = FakeServer().start()
    yield server
    server.stop()


