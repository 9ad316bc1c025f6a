"""Secrets: API keys, Chroma tokens and URL credentials never show in any output.

Distinctive fake secrets are set the way users set them (environment, a
``--base-url`` with ``user:password@``), then the real ``mainrag`` command runs
against a small real HTTP server on 127.0.0.1 (and against closed ports), and
every stdout, stderr and file it writes is searched for them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mainrag.errors import BackendError, InputError
from mainrag.redact import RedactingFilter, protect_logs, redact, register_url

API_KEY = "sk-mainrag-FAKE-7d1c0e"
OPENAI_KEY = "sk-openai-FAKE-91ab4f"
CHROMA_TOKEN = "chroma-tok-FAKE-55e0aa"
URL_PASSWORD = "urlpass-FAKE-3f2a9b"
# ... and the URL's credentials as HTTP Basic auth sends them (a server may quote that header back)
BASIC = base64.b64encode(f"mainrag-user:{URL_PASSWORD}".encode()).decode()
SECRETS = (API_KEY, OPENAI_KEY, CHROMA_TOKEN, URL_PASSWORD, BASIC)
ENV = {"MAINRAG_API_KEY": API_KEY, "OPENAI_API_KEY": OPENAI_KEY, "MAINRAG_CHROMA_TOKEN": CHROMA_TOKEN,
       "COLUMNS": "300"}


def leaks(*texts: str) -> list[str]:
    return [s for s in SECRETS if any(s in t for t in texts)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """An OpenAI-compatible server that answers every judge Yes-ish; ``echo`` makes it
    refuse each request with a 401 whose body quotes the request's credentials back,
    as some servers do."""

    def __init__(self, *, echo: bool = False) -> None:
        self.echo, self.auth_headers = echo, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                server.auth_headers.append(self.headers.get("Authorization") or "")
                if server.echo:
                    self._send(401, {"error": {"message": f"invalid credentials {self.headers.get('Authorization')} "
                                                          f"for http://user:{URL_PASSWORD}@host{self.path}"}})
                elif self.path.endswith("/chat/completions"):
                    self._send(200, server.reply(body))
                else:  # no /tokenize: the backend matches token strings
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("logprobs"):
            tops = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in (("Yes", -0.3), ("No", -1.4))]
            content, logprobs = "Yes", {"content": [{**tops[0], "top_logprobs": tops}]}
        else:
            content, logprobs = "Paris", None
        return {"id": "x", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "logprobs": logprobs, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}}

    def url(self, *, credentials: bool = True) -> str:
        userinfo = f"mainrag-user:{URL_PASSWORD}@" if credentials else ""
        return f"http://{userinfo}127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def mainrag(*args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV, "MAINRAG_BACKEND__RETRIES": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "mainrag", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def passages(tmp_path: Path) -> Path:
    path = tmp_path / "passages.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in [
        {"id": "p1", "title": "Paris", "text": "Paris is the capital of France."},
        {"id": "p2", "title": "Lyon", "text": "Lyon is a city in France."},
    ]))
    return path


def every_file(root: Path) -> list[str]:
    return [p.read_text(errors="replace") for p in root.rglob("*") if p.is_file()]


# -- the command line -----------------------------------------------------------


def test_filter_and_answer_outputs_hold_no_secret(tmp_path: Path, server: Server) -> None:
    file = passages(tmp_path)
    common = ["--query", "What is the capital of France?", "--backend", "openai", "--base-url", server.url(),
              "--model", "m"]
    runs = [mainrag("filter", str(file), *common, "--json", cwd=tmp_path),
            mainrag("answer", str(file), *common, cwd=tmp_path),
            mainrag("answer", str(file), *common, "--json", cwd=tmp_path)]
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert not leaks(r.stdout, r.stderr), (r.stdout, r.stderr)
    assert "Answer:" in runs[1].stdout and json.loads(runs[2].stdout)["answer"] == "Paris"
    # The secrets were in play: the key went to the server (or the URL's own credentials did).
    assert server.auth_headers and all(h for h in server.auth_headers)


def test_errors_and_retry_warnings_hold_no_secret(tmp_path: Path) -> None:
    file = passages(tmp_path)
    closed = f"http://mainrag-user:{URL_PASSWORD}@127.0.0.1:{free_port()}/v1"
    refused = mainrag("filter", str(file), "--query", "q", "--backend", "openai", "--base-url", closed,
                      "--model", "m", cwd=tmp_path)
    assert refused.returncode == 4, refused.stderr
    assert "127.0.0.1" in refused.stderr and "Traceback" not in refused.stderr
    echo = Server(echo=True)  # a 401 whose body repeats the request's Authorization and a URL with a password
    try:
        rejected = [mainrag("filter", str(file), "--query", "q", "--backend", "openai", "--base-url",
                            echo.url(credentials=c), "--model", "m", cwd=tmp_path) for c in (True, False)]
    finally:
        echo.close()
    assert echo.auth_headers[-1] == f"Bearer {API_KEY}"  # without URL credentials the key is sent
    for r in rejected:
        assert r.returncode == 4 and "401" in r.stderr, r.stderr
    for r in (refused, *rejected):
        assert not leaks(r.stdout, r.stderr), r.stderr


def test_chroma_errors_hold_no_token(tmp_path: Path) -> None:
    r = mainrag("collections", "--host", "127.0.0.1", "--port", str(free_port()), cwd=tmp_path)
    assert r.returncode == 4, r.stderr
    assert "127.0.0.1" in r.stderr and not leaks(r.stdout, r.stderr), r.stderr


def test_bench_run_files_hold_no_secret(tmp_path: Path, server: Server) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "What is the capital of France?", "answers": ["Paris"],
                                "ctxs": [json.loads(line) for line in passages(tmp_path).read_text().splitlines()]}) + "\n")
    out = tmp_path / "run"
    r = mainrag("bench", "triviaqa", "--data", str(data), "--backend", "openai", "--base-url", server.url(),
                "--model", "m", "--systems", "rag,main-rag", "--k", "2", "--out", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "run.json").read_text())
    assert "--base-url" in info["command"] and "mainrag-user:***@127.0.0.1" in info["command"]
    files = every_file(out)
    assert len(files) >= 4  # run.json, items.jsonl, calls.jsonl, summary.json, report.md...
    assert not leaks(r.stdout, r.stderr, *files), leaks(r.stdout, r.stderr, *files)


# -- the library ------------------------------------------------------------------


def test_library_results_errors_and_logs_hold_no_secret(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mainrag import MainRAG

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)  # httpx logs each request URL at INFO
    rag = MainRAG(backend={"kind": "openai", "model": "m", "base_urls": [server.url()], "retries": 0})
    try:
        result = rag.filter_sync("What is the capital of France?", ["Paris is in France.", "Lyon is in France."])
    finally:
        rag.close()
    assert len(result.kept) + len(result.dropped) == 2
    shown = [result.model_dump_json(), repr(result), caplog.text, repr(rag.backend), str(rag.backend.name)]
    assert not leaks(*shown), leaks(*shown)


def test_mainrag_errors_are_redacted_when_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINRAG_API_KEY", API_KEY)
    exc = BackendError(f"cannot reach http://u:{URL_PASSWORD}@h:9/v1 with key {API_KEY}")
    assert str(exc) == "cannot reach http://u:***@h:9/v1 with key ***"
    assert not leaks(str(exc), repr(exc), repr(exc.args), str(InputError(f"x {API_KEY}")))


def test_redact_masks_every_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINRAG_CHROMA_TOKEN", CHROMA_TOKEN)
    monkeypatch.setenv("MAINRAG_BACKEND__API_KEY", "backend-key-FAKE-11")  # any MAINRAG_*KEY* setting
    assert redact("https://user:p%40ss@host:1/v1") == "https://user:***@host:1/v1"
    assert redact("https://tok123@host/v1 and http://me@x.org:pw@h/") == "https://***@host/v1 and http://me@x.org:***@h/"
    assert redact("GET http://h/v1?api_key=abc123&x=1") == "GET http://h/v1?api_key=***&x=1"
    assert redact(f"token {CHROMA_TOKEN}; backend-key-FAKE-11") == "token ***; ***"
    assert redact("http://127.0.0.1:8000/v1 is fine") == "http://127.0.0.1:8000/v1 is fine"
    register_url("http://someone:reg-pass-FAKE@h/v1")  # then masked even without a scheme around it
    assert redact("openai:m@someone:reg-pass-FAKE@h") == "openai:m@someone:***@h"


def test_log_records_are_redacted_before_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    protect_logs()
    caplog.set_level(logging.INFO)
    logging.getLogger("mainrag.backends.openai").warning("%s: refused", f"http://u:{URL_PASSWORD}@h/v1")
    logging.getLogger("httpx").info("HTTP Request: POST http://u:%s@h/v1", URL_PASSWORD)
    assert caplog.records and not leaks(caplog.text)
    record = logging.LogRecord("other", logging.ERROR, __file__, 1, "boom %s", (URL_PASSWORD,), None)
    register_url(f"http://u:{URL_PASSWORD}@h/v1")
    assert RedactingFilter().filter(record) and record.getMessage() == "boom ***"
