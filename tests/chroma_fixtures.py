"""Shared fixtures for the Chroma tests: a real ``chroma run`` server on
127.0.0.1, a real HTTP server for faults, and a small corpus.

Import what you use in a test module: ``from chroma_fixtures import chroma_server``.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from needs import need_module

need_module("chromadb", "chroma")  # every Chroma test fails without it, naming the install command

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from mainrag.documents import Document

SERVER_WAIT = 90.0  # seconds for `chroma run` to answer its heartbeat

CORPUS = [
    Document(id="hamlet", title="Hamlet", text="Hamlet is a tragedy written by William Shakespeare around 1600."),
    Document(id="eiffel", title="Eiffel Tower", text="The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    Document(id="photosynthesis", title="Photosynthesis", text="Photosynthesis lets plants turn light, water and carbon dioxide into sugar."),
    Document(id="everest", title="Mount Everest", text="Mount Everest, in the Himalayas, is Earth's highest mountain above sea level."),
    Document(id="python", title="Python (programming language)", text="Python is a programming language created by Guido van Rossum."),
    Document(id="nile", title="Nile", text="The Nile is a major river in northeastern Africa flowing into the Mediterranean."),
    Document(id="mozart", title="Wolfgang Amadeus Mozart", text="Mozart was a prolific composer of the Classical period, born in Salzburg."),
    Document(id="moon", title="Apollo 11", text="Apollo 11 landed the first humans, Neil Armstrong and Buzz Aldrin, on the Moon in 1969."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chroma_cli() -> str:
    beside = Path(sys.executable).with_name("chroma")
    found = str(beside) if beside.is_file() else shutil.which("chroma")
    if not found:
        pytest.fail("the `chroma` command of the chromadb package is not installed; install the [chroma] extra: "
                    ".venv/bin/pip install -e '.[chroma]'", pytrace=False)
    return found


class ChromaServer:
    """One real ``chroma run --path DIR --host 127.0.0.1 --port P`` process."""

    def __init__(self, path: Path, log: Path):
        self.path, self.log = path, log
        self.host, self.port = "127.0.0.1", free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [chroma_cli(), "run", "--path", str(self.path), "--host", self.host, "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"chroma run exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"chroma run did not answer within {SERVER_WAIT}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and nothing else
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.port = free_port()  # the old port may linger in TIME_WAIT
        self.start()


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    root = tmp_path_factory.mktemp("chroma-server")
    server = ChromaServer(root / "data", root / "chroma.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class FaultServer:
    """A real HTTP server on 127.0.0.1 answering every request with one status,
    and recording the headers it received."""

    def __init__(self, status: int = 503, body: bytes = b"unavailable"):
        self.status, self.body = status, body
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.headers.append(dict(self.headers))
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@register_embedding_function
class HashingEmbedding(EmbeddingFunction[Documents]):
    """A real, deterministic bag-of-words embedding (hashed words): a second
    "model" to check that collections refuse vectors of another one."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def __call__(self, input: Documents) -> Embeddings:
        out = []
        for text in input:
            v = np.zeros(self.dim, dtype=np.float32)
            for word in text.lower().split():
                v[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            out.append(v / (np.linalg.norm(v) or 1.0))
        return out

    @staticmethod
    def name() -> str:
        return "test_hashing"

    def get_config(self) -> dict[str, Any]:
        return {"dim": self.dim}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HashingEmbedding:
        return HashingEmbedding(config.get("dim", 64))
