"""A real local HTTP server that speaks the OpenAI chat completions API with scripted replies.

Each test queues the replies it wants (an answer, an error status, a slow reply, a malformed body) and
reads back the requests the client really sent. It binds 127.0.0.1 on a free port: nothing in the
tests reaches the internet.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Errors ask the client to retry after 10 ms, so retry tests do not wait out the client's backoff.
FAST_RETRY = {"retry-after-ms": "10"}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def completion(
    content: str | None, *, finish_reason: str = "stop", tokens: tuple[int, int] = (100, 20), delay_s: float = 0.0
) -> Reply:
    """A chat completion whose one choice says `content`; tokens are (prompt, completion)."""
    body = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "total_tokens": sum(tokens)},
    }
    return Reply(body=json.dumps(body).encode(), delay_s=delay_s)


def answer(**fields) -> Reply:
    """A completion whose content is the JSON object `fields`."""
    return completion(json.dumps(fields))


def error(status: int, message: str = "scripted error") -> Reply:
    body = {"error": {"message": message, "type": "scripted", "code": status}}
    return Reply(status=status, body=json.dumps(body).encode(), headers=dict(FAST_RETRY))


def raw(body: bytes, status: int = 200) -> Reply:
    """A reply whose body is exactly `body`, well-formed or not."""
    return Reply(status=status, body=body)


class ScriptedServer:
    """Serves the queued replies in order; with none left it answers 503 and says not to retry."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.requests: list[dict] = []
        self.unscripted = 0
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self._http.block_on_close = False
        self._thread = threading.Thread(target=self._http.serve_forever, name="scripted-openai", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    def pending(self) -> int:
        with self._lock:
            return len(self._replies)

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()  # ends the delays of replies still being held
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def _next(self, request: dict) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._replies:
                return self._replies.popleft()
            self.unscripted += 1
        return Reply(status=503, body=b'{"error": {"message": "no scripted reply left"}}',
                     headers={"x-should-retry": "false"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(Reply(status=404, body=b'{"error": {"message": "not found"}}'))
                    return
                try:
                    request = json.loads(body)
                except ValueError:
                    request = {"unparsed": body.decode(errors="replace")}
                reply = server._next(request)
                if reply.delay_s and server._closing.wait(reply.delay_s):
                    return
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing left to tell it

            def log_message(self, format, *args) -> None:
                pass  # keep test output quiet

        return Handler
