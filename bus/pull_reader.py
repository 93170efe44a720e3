"""Read a JetStream pull consumer over a plain NATS connection of its own, parsing frames in bulk.

nats-py builds a Msg, parses its headers and passes it through an asyncio queue for every message:
about 30 µs of CPU each on the 2-core machine this was measured on, which made a replay slow. This
connection only sends pull requests and cuts the replies out of what the socket returns, a few µs a
message. It speaks the client protocol's small subset that it needs: TLS when the server or the URL asks
for it (the connection's own SSL context), and an nkey seed file, or user and password or token from
the URL.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import ParseResult

import nats.errors

from bus.roles import sign

READ_CHUNK = 1 << 20
HEARTBEAT_S = 1.0  # the server's idle heartbeat while a following pull waits for new messages
SILENT_HEARTBEATS = 5  # a following pull hears a heartbeat a second: this long without one, the server is gone
FOLLOW_EXPIRES_S = 5.0
CATCH_UP_REQUESTS = 2  # pull requests open at once while catching up
REPLY_TIMEOUT_S = 15.0  # a catch-up pull's messages come at once; this bounds a stalled server
DONE = (404, 408)  # No Messages, Request Timeout: the pull ended short of its batch
HEARTBEAT = 100


class StoredMessage(NamedTuple):
    """One message as the stream stores it (a tuple: a replay makes hundreds of thousands). A line of
    an event file has no subject (None): an export keeps only events that sat on their own."""

    seq: int
    subject: str | None
    data: bytes


class PullError(nats.errors.Error, ConnectionError):
    """The server refused the connection or ended a pull with an error status (its consumer deleted)."""

    def __str__(self) -> str:
        return f"nats: pull: {self.args[0]}"


class PullReader:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer
        self._inbox = b"_INBOX.arx-pull-" + secrets.token_hex(12).encode()  # subjects are server-wide
        self._rest = b""

    @classmethod
    async def open(cls, url: ParseResult, *, seed: Path | None = None, tls: ssl.SSLContext | None = None,
                   timeout: float = 10.0) -> "PullReader":
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname, url.port or 4222, limit=READ_CHUNK), timeout
        )
        try:
            greeting = await asyncio.wait_for(reader.readline(), timeout)
            if not greeting.startswith(b"INFO "):
                raise PullError(greeting.decode(errors="replace").strip() or "no INFO from the server")
            info = json.loads(greeting.removeprefix(b"INFO "))
            if url.scheme == "tls" or info.get("tls_required"):
                if tls is None:
                    raise PullError(f"{url.hostname}:{url.port} wants TLS: give the CA that signed it (ARX_TLS_CA)")
                # NATS greets in the clear and then upgrades the same socket.
                await asyncio.wait_for(writer.start_tls(tls, server_hostname=url.hostname), timeout)
            connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                       "protocol": 1, "lang": "python-arx", "version": "1", "name": "arx-pull"}
            if seed is not None and info.get("nonce"):
                nkey, signature = sign(seed, info["nonce"])
                connect.update(nkey=nkey, sig=signature)
            elif url.username and url.password is not None:
                connect.update(user=url.username, **{"pass": url.password})
            elif url.username:
                connect["auth_token"] = url.username
            writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            answer = await asyncio.wait_for(reader.readline(), timeout)
            if answer != b"PONG\r\n":
                raise PullError(answer.decode(errors="replace").strip())
        except BaseException:
            writer.close()
            raise
        pull = cls(reader, writer)
        writer.write(b"SUB " + pull._inbox + b" 1\r\n")
        return pull

    def close(self) -> None:
        self._writer.close()

    async def pull(
        self, stream: str, consumer: str, *, batch: int, follow: bool, end: int
    ) -> AsyncIterator[list[StoredMessage]]:
        """Batches of at most `batch` messages in consumer order. Without follow, stops once the
        consumer has nothing pending or a message at or past `end` arrived; with follow, yields as soon
        as it has caught up, and raises when the server stays silent for SILENT_HEARTBEATS heartbeats."""
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}".encode()
        if follow:
            request = {"batch": batch, "expires": _ns(FOLLOW_EXPIRES_S), "idle_heartbeat": _ns(HEARTBEAT_S)}
            timeout = SILENT_HEARTBEATS * HEARTBEAT_S
        else:
            request = {"batch": batch, "no_wait": True}
            timeout = REPLY_TIMEOUT_S
        payload = json.dumps(request).encode()
        ask = b"PUB %s %s %d\r\n%s\r\n" % (subject, self._inbox, len(payload), payload)
        owed: deque[int] = deque()  # per open pull request, oldest first: messages it may still deliver

        def ask_for_more(requests: int) -> None:
            self._writer.write(ask * requests)
            owed.extend([batch] * requests)

        # Catching up, a second request waits at the server behind the first: the server goes on
        # reading the stream for it while this process folds what the first one brought.
        ask_for_more(1 if follow else CATCH_UP_REQUESTS)
        got: list[StoredMessage] = []
        while True:
            messages, statuses, pending = await self._receive(timeout)
            got += messages
            filled, stopped = _settle(owed, len(messages), sum(code in DONE for code in statuses))
            caught_up = pending == 0 or (not follow and bool(got) and got[-1].seq >= end)
            finished = not follow and (caught_up or (not owed and not got))
            # Catching up, a request stopped short had nothing more to give: only a filled one is
            # renewed, and one more asked for only when none is left open.
            renew = filled + stopped if follow else max(filled, 0 if owed else 1)
            if renew and not finished:
                ask_for_more(renew)  # before handing this batch on: the server fills the socket meanwhile
            if got and (filled or stopped or caught_up):
                for i in range(0, len(got), batch):  # one read may complete both open requests
                    yield got[i : i + batch]
                got = []
            if finished:
                return

    async def _receive(self, timeout: float) -> tuple[list[StoredMessage], list[int], int | None]:
        """What the next read from the socket completes: messages, pull statuses, the last pending count."""
        while True:
            try:
                chunk = await asyncio.wait_for(self._reader.read(READ_CHUNK), timeout)
            except asyncio.TimeoutError:
                raise nats.errors.TimeoutError() from None
            if not chunk:
                raise ConnectionResetError("nats-server closed the pull connection")
            messages, statuses, pending = self._parse(self._rest + chunk if self._rest else chunk)
            if messages or statuses:
                return messages, statuses, pending

    def _parse(self, buf: bytes) -> tuple[list[StoredMessage], list[int], int | None]:
        messages: list[StoredMessage] = []
        statuses: list[int] = []
        pending = None
        pos, size = 0, len(buf)
        while (eol := buf.find(b"\r\n", pos)) >= 0:
            op = buf[pos : pos + 4]
            if op == b"HMSG" or op == b"MSG ":
                # HMSG <subject> <sid> [reply] <header bytes> <total bytes>, MSG <subject> <sid> [reply] <bytes>
                args = buf[pos + 4 : eol].split()
                total = int(args[-1])
                start, stop = eol + 2, eol + 2 + total
                if stop + 2 > size:
                    break  # the rest of this frame is still on its way
                headers = int(args[-2]) if op == b"HMSG" else 0
                if len(args) == (5 if op == b"HMSG" else 4):
                    # The reply is the JetStream ack subject, which ends <seq>.<cseq>.<time>.<pending>,
                    # with a random token after that in its newer, 12-token form.
                    reply = args[2]
                    tokens = reply.rsplit(b".", 5 if reply.count(b".") == 11 else 4)
                    pending = int(tokens[4])
                    messages.append(StoredMessage(int(tokens[1]), args[0].decode(), buf[start + headers : stop]))
                else:  # a status from the server about the pull: "NATS/1.0 404 No Messages"
                    code = int(buf[start + 9 : start + 12])
                    if code != HEARTBEAT and code not in DONE:
                        raise PullError(buf[start + 9 : start + headers].decode(errors="replace").strip())
                    statuses.append(code)
                pos = stop + 2
            elif op == b"PING":
                self._writer.write(b"PONG\r\n")
                pos = eol + 2
            elif op == b"-ERR":
                raise PullError(buf[pos + 5 : eol].decode(errors="replace"))
            else:  # PONG, +OK, INFO
                pos = eol + 2
        self._rest = buf[pos:]
        return messages, statuses, pending


def _settle(owed: deque[int], delivered: int, statuses: int) -> tuple[int, int]:
    """Count `delivered` messages against the oldest open requests, then let each pull status end
    the oldest request still open; returns how many requests were filled and how many stopped short."""
    filled = 0
    while delivered and owed:
        taken = min(delivered, owed[0])
        delivered -= taken
        owed[0] -= taken
        if owed[0] == 0:
            owed.popleft()
            filled += 1
    stopped = min(statuses, len(owed))
    for _ in range(stopped):
        owed.popleft()
    return filled, stopped


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)
