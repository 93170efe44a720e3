"""The pull reader's wire protocol byte by byte, no nats-server: frames cut from buffers however the socket
splits them, both forms of the JetStream ack subject, pull statuses, PING, -ERR, the CONNECT each
credential makes, a pull request's bytes, the flow control's bookkeeping, and the socket shell against
a scripted fake server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
from collections import deque
from urllib.parse import urlparse

import nkeys
import pytest
from nats.aio.msg import Msg

from bus.nats_wire import (
    DONE,
    PONG,
    PullError,
    StoredMessage,
    ack_reply,
    check_connected,
    connect,
    parse,
    pull_request,
    server_info,
    wants_tls,
)
from bus.pull_reader import PullReader, settle

INBOX = b"_INBOX.arx-pull-test"
MSG_ID = b"NATS/1.0\r\nNats-Msg-Id: e1\r\n\r\n"


def ack(sseq: int, pending: int, *, cseq: int = 1, delivered: int = 1) -> bytes:
    """The 9-token ack subject nats-server gives a message of stream ARX_EVENTS."""
    return b"$JS.ACK.ARX_EVENTS.read-abc.%d.%d.%d.1733456789000000000.%d" % (delivered, sseq, cseq, pending)


def hmsg(subject: bytes, reply: bytes | None, headers: bytes, data: bytes) -> bytes:
    """HMSG <subject> <sid> [reply] <header bytes> <header + payload bytes>, as the protocol defines it."""
    args = [subject, b"1", *([reply] if reply else []), b"%d" % len(headers), b"%d" % (len(headers) + len(data))]
    return b"HMSG " + b" ".join(args) + b"\r\n" + headers + data + b"\r\n"


def msg(subject: bytes, reply: bytes, data: bytes) -> bytes:
    """MSG <subject> <sid> <reply> <payload bytes>: a message stored without headers."""
    return b"MSG %s 1 %s %d\r\n%s\r\n" % (subject, reply, len(data), data)


def status(code: int, text: str, *extra: str) -> bytes:
    """A pull status: a HMSG to the inbox with no reply and only a header block."""
    block = "\r\n".join([f"NATS/1.0 {code} {text}", *extra]).encode() + b"\r\n\r\n"
    return hmsg(INBOX, None, block, b"")


# -- frames -------------------------------------------------------------------------------------


def test_several_messages_in_one_buffer_come_out_in_order_without_their_headers():
    buf = (hmsg(b"arx.ev.c1.a", ack(5, 2), MSG_ID, b'{"n": 1}')
           + msg(b"arx.ev.c1.b", ack(6, 1), b'{"n": 2}')
           + hmsg(b"arx.ev.c1.c", ack(9, 0), MSG_ID, b""))
    frames = parse(buf)
    assert frames.messages == [
        StoredMessage(5, "arx.ev.c1.a", b'{"n": 1}'),
        StoredMessage(6, "arx.ev.c1.b", b'{"n": 2}'),
        StoredMessage(9, "arx.ev.c1.c", b""),
    ]
    assert frames.pending == 0  # the last message's: what the consumer still holds after it
    assert (frames.statuses, frames.pings, frames.rest) == ([], 0, b"")


def test_a_msg_without_headers_keeps_its_whole_payload():
    frames = parse(msg(b"arx.ev.c1.x", ack(3, 4), b"hello"))
    assert frames.messages == [StoredMessage(3, "arx.ev.c1.x", b"hello")] and frames.pending == 4


def test_a_payload_is_cut_by_its_length_not_by_what_it_contains():
    tricky = b"PING\r\n-ERR 'no'\r\nMSG a 1 b 3\r\n"
    frames = parse(msg(b"s", ack(1, 0), tricky) + hmsg(b"s", ack(2, 0), MSG_ID, tricky))
    assert [m.data for m in frames.messages] == [tricky, tricky] and frames.pings == 0


def test_a_frame_split_across_two_reads_waits_whole_in_the_rest():
    first = hmsg(b"arx.ev.c1.a", ack(1, 1), MSG_ID, b"payload one")
    second = msg(b"arx.ev.c1.b", ack(2, 0), b"payload\r\ntwo")
    buf = first + second
    for cut in range(1, len(buf)):
        head = parse(buf[:cut])
        first_whole = cut >= len(first)  # up to its closing \r\n
        assert head.messages == ([StoredMessage(1, "arx.ev.c1.a", b"payload one")] if first_whole else []), cut
        assert head.rest == buf[len(first) if first_whole else 0 : cut], cut  # nothing of a partial frame is lost
        tail = parse(head.rest + buf[cut:])
        assert head.messages + tail.messages == [
            StoredMessage(1, "arx.ev.c1.a", b"payload one"),
            StoredMessage(2, "arx.ev.c1.b", b"payload\r\ntwo"),
        ], cut
        assert tail.rest == b"" and tail.pending == 0


def test_a_control_line_without_its_end_yet_is_kept():
    assert parse(b"HMSG arx.ev.c1.a 1 $JS.ACK.ARX_EV") == ([], [], None, 0, b"HMSG arx.ev.c1.a 1 $JS.ACK.ARX_EV")
    assert parse(b"PI").rest == b"PI" and parse(b"PI").pings == 0


def test_server_chatter_that_needs_nothing_is_skipped():
    buf = b'INFO {"server_id": "x"}\r\n+OK\r\nPONG\r\n' + msg(b"s", ack(7, 0), b"d")
    assert parse(buf).messages == [StoredMessage(7, "s", b"d")]


# -- ack subjects -------------------------------------------------------------------------------

# nats-server's two forms, as nats.py's Msg.Metadata reads them (nats/aio/msg.py, _V1/_V2_TOKEN_COUNT):
#   9:  $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>
#   12: $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>
#       .<pending>.<random token>
# nats.py also takes 11 tokens: the 12-token form without its random token.


@pytest.mark.parametrize("reply, expected", [
    # The stream and consumer sequences are equal here (one reader from the start of the stream) ...
    (b"$JS.ACK.ARX_EVENTS.read-abc.1.42.42.1733456789000000000.7", (42, 7)),
    (b"$JS.ACK.hub.ACCHASH.ARX_EVENTS.read-abc.1.42.42.1733456789000000000.7.r4nd0m", (42, 7)),
    # ... and differ here, with a redelivery count, so that a token read from the wrong place shows.
    (b"$JS.ACK.ARX_EVENTS.read-abc.3.1001.17.1733456789000000000.250", (1001, 250)),
    (b"$JS.ACK.hub.ACCHASH.ARX_EVENTS.read-abc.3.1001.17.1733456789000000000.250.r4nd0m", (1001, 250)),
    (b"$JS.ACK._.ACCHASH.ARX_EVENTS.read-abc.3.1001.17.1733456789000000000.250", (1001, 250)),
])
def test_the_ack_subject_gives_the_stream_sequence_and_pending_count(reply, expected):
    assert ack_reply(reply) == expected


def test_the_ack_subject_reads_as_nats_py_reads_it():
    rng = random.Random(7)
    for _ in range(300):
        delivered, sseq, cseq, pending = (rng.randrange(1, 10**rng.randint(1, 12)) for _ in range(4))
        tail = f"{delivered}.{sseq}.{cseq}.{rng.randrange(10**18, 10**19)}.{pending}"
        for reply in (f"$JS.ACK.S.read-{rng.randrange(99)}.{tail}",
                      f"$JS.ACK.hub.ACC{rng.randrange(99)}.S.C.{tail}.tok{rng.randrange(99)}",
                      f"$JS.ACK.hub.ACC.S.C.{tail}"):
            metadata = Msg(_client=None, reply=reply).metadata
            assert ack_reply(reply.encode()) == (metadata.sequence.stream, metadata.num_pending), reply


def test_a_message_in_the_newer_ack_form_parses():
    reply = b"$JS.ACK.hub.ACCHASH.ARX_EVENTS.read-abc.1.42.40.1733456789000000000.7.r4nd0m"
    frames = parse(hmsg(b"arx.ev.c1.a", reply, MSG_ID, b"x"))
    assert frames.messages == [StoredMessage(42, "arx.ev.c1.a", b"x")] and frames.pending == 7


# -- pull statuses, PING, -ERR ------------------------------------------------------------------


@pytest.mark.parametrize("frame, code, ends_request", [
    (status(404, "No Messages"), 404, True),
    (status(408, "Request Timeout", "Nats-Pending-Messages: 10", "Nats-Pending-Bytes: 0"), 408, True),
    (status(100, "Idle Heartbeat", "Nats-Last-Consumer: 0", "Nats-Last-Stream: 0"), 100, False),
])
def test_a_pull_status_that_is_no_error_is_counted(frame, code, ends_request):
    frames = parse(msg(b"s", ack(4, 3), b"d") + frame)
    assert frames.statuses == [code] and frames.messages == [StoredMessage(4, "s", b"d")]
    assert frames.pending == 3  # a status carries no pending count of its own
    assert (code in DONE) == ends_request  # what the pull loop settles its open requests by


@pytest.mark.parametrize("frame, text", [
    (status(409, "Consumer Deleted"), "409 Consumer Deleted"),
    (status(409, "Exceeded MaxWaiting"), "409 Exceeded MaxWaiting"),
    (status(400, "Bad Request"), "400 Bad Request"),
])
def test_any_other_pull_status_raises_with_its_text(frame, text):
    with pytest.raises(PullError) as raised:
        parse(msg(b"s", ack(4, 3), b"d") + frame)
    assert str(raised.value) == f"nats: pull: {text}"


def test_each_ping_among_messages_is_counted_to_be_answered():
    ping = b"PING\r\n"
    buf = msg(b"s", ack(1, 2), b"a") + ping + msg(b"s", ack(2, 1), b"b") + ping + msg(b"s", ack(3, 0), b"c")
    frames = parse(buf)
    assert [m.seq for m in frames.messages] == [1, 2, 3] and frames.pings == 2 and frames.rest == b""
    assert parse(b"PING\r\n") == ([], [], None, 1, b"")


def test_err_raises_with_the_servers_text():
    with pytest.raises(PullError) as raised:
        parse(msg(b"s", ack(1, 0), b"a") + b"-ERR 'Permissions Violation for Publish to x'\r\n")
    assert str(raised.value) == "nats: pull: 'Permissions Violation for Publish to x'"


# -- handshake and requests ---------------------------------------------------------------------


def connect_options(line: bytes) -> dict:
    assert line.startswith(b"CONNECT ") and line.endswith(b"\r\nPING\r\n") and line.count(b"\r\n") == 2
    return json.loads(line.removeprefix(b"CONNECT ").removesuffix(b"\r\nPING\r\n"))


AUTH = {"nkey", "sig", "user", "pass", "auth_token"}


def test_an_nkey_signs_the_servers_nonce(tmp_path):
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    (tmp_path / "reader.nk").write_bytes(seed + b"\n")
    options = connect_options(connect({"nonce": "n0nce-from-server"}, seed=tmp_path / "reader.nk",
                                      user="ignored", password="ignored"))
    pair = nkeys.from_seed(bytearray(seed))
    assert AUTH & options.keys() == {"nkey", "sig"} and options["nkey"] == pair.public_key.decode()
    signature = base64.urlsafe_b64decode(options["sig"] + "=" * (-len(options["sig"]) % 4))
    assert pair.verify(b"n0nce-from-server", signature)
    with pytest.raises(nkeys.ErrInvalidSignature):
        pair.verify(b"another nonce", signature)


def test_a_user_with_a_password_logs_in_and_a_user_alone_is_a_token(tmp_path):
    url = urlparse("nats://reader:s3cret@localhost:4222")
    options = connect_options(connect({}, seed=None, user=url.username, password=url.password))
    assert AUTH & options.keys() == {"user", "pass"} and (options["user"], options["pass"]) == ("reader", "s3cret")
    url = urlparse("nats://t0ken@localhost:4222")
    options = connect_options(connect({}, seed=None, user=url.username, password=url.password))
    assert AUTH & options.keys() == {"auth_token"} and options["auth_token"] == "t0ken"
    # A seed is no use to a server that sends no nonce (it does not check nkeys): the URL's user counts.
    options = connect_options(connect({}, seed=tmp_path / "never-read.nk", user="reader", password="s3cret"))
    assert AUTH & options.keys() == {"user", "pass"}


def test_connect_asks_for_what_the_parser_relies_on():
    options = connect_options(connect({}, seed=None, user=None, password=None))
    assert not AUTH & options.keys()
    # Status frames come only to a client that takes headers; +OK after every PUB only when verbose.
    assert options["headers"] is True and options["verbose"] is False


def test_the_greeting_must_be_info_and_the_answer_pong():
    assert server_info(b'INFO {"server_id": "N1", "nonce": "abc", "tls_required": true}\r\n')["nonce"] == "abc"
    with pytest.raises(PullError, match="maximum connections exceeded"):
        server_info(b"-ERR 'maximum connections exceeded'\r\n")
    with pytest.raises(PullError, match="no INFO from the server"):
        server_info(b"")
    check_connected(PONG)
    with pytest.raises(PullError, match="Authorization Violation"):
        check_connected(b"-ERR 'Authorization Violation'\r\n")


def test_tls_when_the_url_or_the_server_asks():
    assert wants_tls("tls", {}) and wants_tls("nats", {"tls_required": True})
    assert not wants_tls("nats", {}) and not wants_tls("nats", {"tls_required": False})


def test_a_pull_request_is_a_pub_to_the_consumers_next_subject_replying_to_the_inbox():
    request = {"batch": 500, "no_wait": True}
    frame = pull_request("ARX_EVENTS", "read-abc", INBOX, request)
    line, payload, end = frame.split(b"\r\n")
    assert line.split(b" ") == [b"PUB", b"$JS.API.CONSUMER.MSG.NEXT.ARX_EVENTS.read-abc", INBOX,
                                str(len(payload)).encode()]
    assert json.loads(payload) == request and end == b""


# -- flow control -------------------------------------------------------------------------------


@pytest.mark.parametrize("owed, delivered, statuses, settled, left", [
    ([10, 10], 4, 0, (0, 0), [6, 10]),  # the oldest request takes messages first
    ([10, 10], 10, 0, (1, 0), [10]),
    ([10, 10], 15, 0, (1, 0), [5]),  # one read can fill one request and start on the next
    ([10, 10], 20, 0, (2, 0), []),
    ([10, 10], 3, 1, (0, 1), [10]),  # a status ends the oldest request still open, short of its batch
    ([5, 10], 5, 1, (1, 1), []),  # a filled request gets no status: this one is the next request's
    ([10], 0, 3, (0, 1), []),  # statuses beyond the open requests end nothing more
    ([5], 8, 0, (1, 0), []),
    ([], 0, 1, (0, 0), []),
])
def test_settle_counts_filled_and_stopped_requests(owed, delivered, statuses, settled, left):
    owed = deque(owed)
    assert settle(owed, delivered, statuses) == settled
    assert list(owed) == left


# -- the socket shell ---------------------------------------------------------------------------


def test_the_reader_answers_a_ping_in_the_middle_of_a_pull_and_joins_split_frames():
    """A scripted server: the handshake, then three messages in two writes, the second message cut
    between them and a PING before the cut."""
    first, second, third = (msg(b"arx.ev.c1." + name, ack(seq, 3 - seq), name) for seq, name in
                            ((1, b"a"), (2, b"b"), (3, b"c")))
    replies = first + b"PING\r\n" + second + third
    cut = len(first) + len(b"PING\r\n") + 10
    heard: dict[str, bytes] = {}

    async def run() -> list[list[StoredMessage]]:
        served = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b'INFO {"server_id": "fake", "headers": true}\r\n')
            for line in ("connect", "ping"):
                heard[line] = await reader.readline()
            writer.write(PONG)
            for line in ("sub", "request", "request payload", "second request", "second request payload"):
                heard[line] = await reader.readline()
            writer.write(replies[:cut])
            await writer.drain()
            await asyncio.sleep(0.05)  # two reads, most likely: either way every message comes whole
            writer.write(replies[cut:])
            heard["pong"] = await reader.readline()
            writer.close()
            served.set_result(None)

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            pull = await PullReader.open(urlparse(f"nats://t0ken@127.0.0.1:{port}"), timeout=5)
            try:
                batches = [batch async for batch in pull.pull("ARX_EVENTS", "read-abc", batch=10, follow=False, end=3)]
            finally:
                pull.close()
            await served
        return batches

    batches = asyncio.run(asyncio.wait_for(run(), 10))
    assert batches == [[StoredMessage(1, "arx.ev.c1.a", b"a"), StoredMessage(2, "arx.ev.c1.b", b"b"),
                        StoredMessage(3, "arx.ev.c1.c", b"c")]]
    assert connect_options(heard["connect"] + heard["ping"])["auth_token"] == "t0ken"
    inbox = heard["sub"].split()[1]
    assert heard["request"].split()[1:3] == [b"$JS.API.CONSUMER.MSG.NEXT.ARX_EVENTS.read-abc", inbox]
    assert heard["request"] == heard["second request"]  # catching up, two requests open at once
    assert heard["pong"] == PONG
