"""A fault-injecting OpenAI-compatible server for tests: real HTTP on 127.0.0.1,
in a thread, scripted per request. Only for what the real vLLM server cannot do
on demand: failures and odd replies.

A :class:`Reply` says what one request gets: a status, headers and a body
(a dict as JSON, a str as text, raw bytes as they are), after ``delay``
seconds; or a fault: the body cut short after ``truncate`` bytes, sent in
pieces ``trickle`` seconds apart, or the connection closed without a word
(``drop``). While it waits the server watches the socket, so a client that
gives up (a timeout, a cancelled task) is counted in ``disconnects``.
"""

from __future__ import annotations

import json
import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mainrag.backends.openai import OpenAICompatibleBackend

Responder = Callable[[str, dict[str, Any]], "Reply | None"]


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; str -> text; bytes -> as is; None -> the default for the path
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the status line
    truncate: int | None = None  # send only this many body bytes (Content-Length says all), then close
    trickle: float = 0.0  # seconds between 8-byte pieces of the body
    drop: bool = False  # close the connection without answering


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


def position(entries: list[tuple[str, float]], *, top: bool = True) -> dict[str, Any]:
    """One generated token's logprobs: the first entry is the emitted token."""
    tops = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in entries]
    return {**tops[0], "top_logprobs": tops if top else []}


def logprobs_reply(positions: list[dict[str, Any]] | None, *, prompt_tokens: int = 17) -> dict[str, Any]:
    """A chat completion whose tokens have these logprobs (None: a reply without logprobs)."""
    text = "".join(p["token"] for p in positions or [])
    return {
        "id": "fake",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": positions} if positions is not None else None,
            "finish_reason": "length",
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(positions or []),
                  "total_tokens": prompt_tokens + len(positions or [])},
    }


def top_logprobs_reply(entries: list[tuple[str, float]], *, prompt_tokens: int = 17) -> dict[str, Any]:
    """A one-token judge reply: the first entry is the emitted token, all are its top logprobs."""
    return logprobs_reply([position(entries)], prompt_tokens=prompt_tokens)


def tokenizer(vocab: Mapping[str, list[int]]) -> Responder:
    """Answers vLLM's ``/tokenize`` from ``vocab`` (text -> ids), whatever order requests come in."""

    def respond(path: str, body: dict[str, Any]) -> Reply | None:
        if path != "/tokenize":
            return None
        tokens = vocab.get(body.get("prompt", ""), [999, 998])
        return Reply(body={"count": len(tokens), "max_model_len": 2048, "tokens": tokens})

    return respond


DEFAULT_JUDGE = top_logprobs_reply([("Yes", math.log(0.6)), ("No", math.log(0.3)), (" yes", math.log(0.05))])
DEFAULT_TEXT = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": " Paris.\n"}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 3},
}


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog (5) drops concurrent connects: 1 s SYN retries
    daemon_threads = True
    block_on_close = False


class FakeServer:
    """Answers POSTs from a per-path script of :class:`Reply`, then ``responder``, then defaults."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder = responder  # decides from the request when the script is empty
        self.script: dict[str, deque[Reply]] = {}
        self.seen: list[Seen] = []
        self.active = 0
        self.max_active = 0
        self.disconnects = 0  # clients that went away while a reply was pending
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self.script.setdefault(path, deque()).extend(replies)

    def count(self, path: str = "/v1/chat/completions") -> int:
        with self._lock:
            return sum(1 for s in self.seen if s.path == path)

    def bodies(self, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        with self._lock:
            return [s.body for s in self.seen if s.path == path]

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``condition`` (the server runs in its own thread) until true or ``timeout``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition():
                return True
            time.sleep(0.01)
        return condition()

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
                    if self._wait(reply.delay):
                        self._answer(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up mid-reply
                finally:
                    with fake._lock:
                        fake.active -= 1

            def _answer(self, reply: Reply) -> None:
                if reply.drop:
                    self.close_connection = True
                    return
                data, ctype = _encode(reply.body)
                self.send_response(reply.status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if reply.truncate is not None:
                    self.wfile.write(data[: reply.truncate])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if not reply.trickle:
                    self.wfile.write(data)
                    return
                for i in range(0, len(data), 8):
                    self.wfile.write(data[i : i + 8])
                    self.wfile.flush()
                    if not self._wait(reply.trickle):
                        return

            def _wait(self, seconds: float) -> bool:
                """Sleep, watching the socket; False as soon as the client hangs up."""
                end = time.monotonic() + seconds
                while (left := end - time.monotonic()) > 0:
                    readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
                    if readable:
                        try:
                            gone = self.connection.recv(1, socket.MSG_PEEK) == b""
                        except OSError:
                            gone = True
                        if gone:
                            with fake._lock:
                                fake.disconnects += 1
                            return False
                return True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def dead_url() -> str:
    """A loopback base URL with nothing listening: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def fast_backend(url: str | list[str], **kwargs: Any) -> OpenAICompatibleBackend:
    """A backend with short backoff and timeouts, so fault tests run quickly."""
    options: dict[str, Any] = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0, "connect_timeout": 2.0}
    return OpenAICompatibleBackend("fake-model", url, **(options | kwargs))


def _encode(body: Any) -> tuple[bytes, str]:
    if isinstance(body, bytes):
        return body, "application/json"
    if isinstance(body, str):
        return body.encode(), "text/plain"
    return json.dumps(body).encode(), "application/json"


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
