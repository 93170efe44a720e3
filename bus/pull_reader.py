"""Read a JetStream pull consumer over a plain NATS connection of its own, parsing frames in bulk.

nats-py builds a Msg, parses its headers and passes it through an asyncio queue for every message:
about 30 µs of CPU each on the 2-core machine this was measured on, which made a replay slow. This
connection only sends pull requests and cuts the replies out of what the socket returns, a few µs a
message. The protocol itself, handshake to frames, is pure functions in bus.nats_wire; here are the
socket (TLS when the server or the URL asks for it, credentials from an nkey seed file or the URL) and
the pull requests' flow control (`settle`).
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import ParseResult

import nats.errors

from bus.nats_wire import (
    DONE,
    PONG,
    PullError,
    StoredMessage,
    check_connected,
    connect,
    parse,
    pull_request,
    server_info,
    subscribe,
    wants_tls,
)

__all__ = ["PullError", "PullReader", "StoredMessage", "settle"]

READ_CHUNK = 1 << 20
HEARTBEAT_S = 1.0  # the server's idle heartbeat while a following pull waits for new messages
SILENT_HEARTBEATS = 5  # a following pull hears a heartbeat a second: this long without one, the server is gone
FOLLOW_EXPIRES_S = 5.0
CATCH_UP_REQUESTS = 2  # pull requests open at once while catching up
REPLY_TIMEOUT_S = 15.0  # a catch-up pull's messages come at once; this bounds a stalled server


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
            info = server_info(await asyncio.wait_for(reader.readline(), timeout))
            if wants_tls(url.scheme, info):
                if tls is None:
                    raise PullError(f"{url.hostname}:{url.port} wants TLS: give the CA that signed it (ARX_TLS_CA)")
                # NATS greets in the clear and then upgrades the same socket.
                await asyncio.wait_for(writer.start_tls(tls, server_hostname=url.hostname), timeout)
            writer.write(connect(info, seed=seed, user=url.username, password=url.password))
            check_connected(await asyncio.wait_for(reader.readline(), timeout))
        except BaseException:
            writer.close()
            raise
        pull = cls(reader, writer)
        writer.write(subscribe(pull._inbox))
        return pull

    def close(self) -> None:
        self._writer.close()

    async def pull(
        self, stream: str, consumer: str, *, batch: int, follow: bool, end: int
    ) -> AsyncIterator[list[StoredMessage]]:
        """Batches of at most `batch` messages in consumer order. Without follow, stops once the
        consumer has nothing pending or a message at or past `end` arrived; with follow, yields as soon
        as it has caught up, and raises when the server stays silent for SILENT_HEARTBEATS heartbeats."""
        if follow:
            request = {"batch": batch, "expires": _ns(FOLLOW_EXPIRES_S), "idle_heartbeat": _ns(HEARTBEAT_S)}
            timeout = SILENT_HEARTBEATS * HEARTBEAT_S
        else:
            request = {"batch": batch, "no_wait": True}
            timeout = REPLY_TIMEOUT_S
        ask = pull_request(stream, consumer, self._inbox, request)
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
            filled, stopped = settle(owed, len(messages), sum(code in DONE for code in statuses))
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
            frames = parse(self._rest + chunk if self._rest else chunk)
            self._rest = frames.rest
            if frames.pings:
                self._writer.write(PONG * frames.pings)
            if frames.messages or frames.statuses:
                return frames.messages, frames.statuses, frames.pending


def settle(owed: deque[int], delivered: int, statuses: int) -> tuple[int, int]:
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
