"""The NATS client protocol's small subset that the pull reader (bus.pull_reader) speaks, as pure
functions over bytes: the handshake's lines, a JetStream pull request, and the frames a pull's
replies come in, cut out of one buffer.

The parser is a replay's hot path: it cuts frames out of the socket's bytes with `find` and makes no
object per message but the StoredMessage itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import nats.errors

from bus.roles import sign

HEARTBEAT = 100  # Idle Heartbeat: a following pull is still open
DONE = (404, 408)  # No Messages, Request Timeout: the pull ended short of its batch
PONG = b"PONG\r\n"
STATUS_CODE_AT = len(b"NATS/1.0 ")  # a status header block starts "NATS/1.0 <code> <text>"


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


class Frames(NamedTuple):
    """What one buffer of the server's bytes holds, up to the first frame not yet whole."""

    messages: list[StoredMessage]
    statuses: list[int]  # pull statuses, HEARTBEAT or one of DONE, in order
    pending: int | None  # the consumer's pending count after the last message; None without one
    pings: int  # each is owed a PONG
    rest: bytes  # the start of a frame still on its way: prepend it to the next read


# -- handshake ----------------------------------------------------------------------------------


def server_info(greeting: bytes) -> dict:
    """The server's INFO line as a dict; anything else is the server refusing us."""
    if not greeting.startswith(b"INFO "):
        raise PullError(greeting.decode(errors="replace").strip() or "no INFO from the server")
    return json.loads(greeting.removeprefix(b"INFO "))


def wants_tls(scheme: str, info: dict) -> bool:
    return scheme == "tls" or bool(info.get("tls_required"))


def connect(info: dict, *, seed: Path | None, user: str | None, password: str | None) -> bytes:
    """CONNECT with the first credential that applies, then a PING: its PONG says we are in.

    An nkey signs the server's nonce; a URL's user with a password logs in, a user alone is a token."""
    options = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
               "protocol": 1, "lang": "python-arx", "version": "1", "name": "arx-pull"}
    if seed is not None and info.get("nonce"):
        nkey, signature = sign(seed, info["nonce"])
        options.update(nkey=nkey, sig=signature)
    elif user and password is not None:
        options.update(user=user, **{"pass": password})
    elif user:
        options["auth_token"] = user
    return b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n"


def check_connected(answer: bytes) -> None:
    """The server answers the handshake's PING with PONG, or says why it will not (-ERR ...)."""
    if answer != PONG:
        raise PullError(answer.decode(errors="replace").strip())


# -- requests -----------------------------------------------------------------------------------


def subscribe(inbox: bytes) -> bytes:
    return b"SUB " + inbox + b" 1\r\n"


def pull_request(stream: str, consumer: str, inbox: bytes, request: dict) -> bytes:
    """A pull request: the consumer's next messages, delivered to `inbox`."""
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}".encode()
    payload = json.dumps(request).encode()
    return b"PUB %s %s %d\r\n%s\r\n" % (subject, inbox, len(payload), payload)


# -- replies ------------------------------------------------------------------------------------


def parse(buf: bytes) -> Frames:
    """Cut every whole frame out of `buf`. Raises PullError on -ERR or a pull status that is an error."""
    messages: list[StoredMessage] = []
    statuses: list[int] = []
    pending = None
    pings = 0
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
            if len(args) == (5 if op == b"HMSG" else 4):  # a reply subject: a stored message
                seq, pending = ack_reply(args[2])
                messages.append(StoredMessage(seq, args[0].decode(), buf[start + headers : stop]))
            else:  # no reply: the server's status about the pull
                statuses.append(pull_status(buf[start : start + headers]))
            pos = stop + 2
        elif op == b"PING":
            pings += 1
            pos = eol + 2
        elif op == b"-ERR":
            raise PullError(buf[pos + 5 : eol].decode(errors="replace"))
        else:  # PONG, +OK, INFO
            pos = eol + 2
    return Frames(messages, statuses, pending, pings, buf[pos:])


def ack_reply(reply: bytes) -> tuple[int, int]:
    """(stream sequence, consumer's pending count) from a JetStream message's ack subject.

    nats-server writes it in two forms (nats.py's Msg.Metadata reads them by position):
      9 tokens:  $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>
      12 tokens: $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>
                 .<timestamp>.<pending>.<random token>
    Counted from the end, both read <stream seq>.<consumer seq>.<timestamp>.<pending>, the newer with a
    token after it; so does the 11-token form nats.py also accepts (the newer one without that token).
    """
    tokens = reply.rsplit(b".", 5 if reply.count(b".") == 11 else 4)
    return int(tokens[1]), int(tokens[4])


def pull_status(headers: bytes) -> int:
    """The code of a status frame's header block, "NATS/1.0 <code> <text>"; an error code raises."""
    code = int(headers[STATUS_CODE_AT : STATUS_CODE_AT + 3])
    if code != HEARTBEAT and code not in DONE:
        raise PullError(headers[STATUS_CODE_AT:].decode(errors="replace").strip())
    return code
