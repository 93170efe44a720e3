"""Who may write what: one NATS identity (an nkey) per role, and what nats-server lets each publish.

The log is only as trustworthy as its least trusted writer, so the rules are enforced by nats-server
itself, not by our clients' manners: a role's credential lets it publish only the facts it owns.

- admin: starts and stops campaigns, imports logs, owns the stream, its consumers and the object store;
- agent: joins campaigns, claims trial slots, proposes trials and reports LLM spend that led to no trial (a proposal it
  finds invalid itself carries the reason, and the executor writes the outcome): an agent can never
  write an outcome or a score;
- executor: starts and finishes runs, stores logs and artifacts, and writes the outcome of a trial it
  refuses or abandons;
- evaluator: writes scored outcomes, asks for confirmation reruns and stops a campaign on its budget;
- reader (projector, status, audit, watch, export): reads, nothing more.

Every role reads the whole log. Only admin may delete or purge anything; nobody but a queue's own role
may pull from it or acknowledge its messages, so no client can make another role's work vanish.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

import nkeys

from bus import subjects

ROLES = ("admin", "agent", "executor", "evaluator", "reader")

# The durable work queues and the role that owns each (bus.durable creates them, the owner pulls and acks).
QUEUES = {"executors": "executor", "executors-cuda": "executor", "evaluators": "evaluator"}

# The facts each role may publish, as stream subjects (bus.subjects builds every subject).
FACTS = {
    "admin": [subjects.ALL],
    "agent": [subjects.JOINS, subjects.SLOTS, subjects.PROPOSALS, subjects.SPENDS],
    "executor": [subjects.STARTS, subjects.FINISHES, subjects.REPLICATES, subjects.OUTCOMES],
    "evaluator": [subjects.OUTCOMES, subjects.CONFIRMATIONS, subjects.STOPS],
    "reader": [],
}


def _reads(stream: str, bucket: str) -> list[str]:
    """The JetStream API calls that reading the log and the object store needs, and nothing that writes."""
    objects = f"OBJ_{bucket}"
    return [
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",  # the object store finds its stream by subject
        *(f"$JS.API.STREAM.INFO.{name}" for name in (stream, objects)),
        # Consumers created on a subject that names them (`permissions` denies the queues of other roles);
        # the object store's ordered consumer uses the unnamed form, which takes any name in its request.
        f"$JS.API.CONSUMER.CREATE.{stream}.*",
        f"$JS.API.CONSUMER.CREATE.{stream}.*.>",
        f"$JS.API.CONSUMER.CREATE.{objects}",
        *(f"$JS.API.CONSUMER.INFO.{name}.*" for name in (stream, objects)),
        *(f"$JS.API.CONSUMER.MSG.NEXT.{name}.*" for name in (stream, objects)),
        *(f"$JS.API.DIRECT.GET.{name}.>" for name in (stream, objects)),
        *(f"$JS.API.STREAM.MSG.GET.{name}" for name in (stream, objects)),
        "$JS.FC.>",  # flow-control answers of the object store's ordered consumer
    ]


def permissions(role: str, stream: str, bucket: str) -> dict:
    """nats-server's publish/subscribe permissions for one role."""
    if role == "admin":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    own = [queue for queue, owner in QUEUES.items() if owner == role]
    others = [queue for queue in QUEUES if queue not in own]
    allow = [*FACTS[role], *_reads(stream, bucket)]
    for queue in own:
        allow += [f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{queue}", f"$JS.ACK.{stream}.{queue}.>"]
    if role == "executor":  # logs and artifacts; it may not purge, so it can add objects but not remove any
        allow += [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"]
    deny = [
        subject
        for queue in others
        for subject in (f"$JS.API.CONSUMER.CREATE.{stream}.{queue}", f"$JS.API.CONSUMER.CREATE.{stream}.{queue}.>",
                        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{queue}")
    ]
    return {"publish": {"allow": allow, "deny": deny}, "subscribe": {"allow": ["_INBOX.>"]}}


# -- credentials ---------------------------------------------------------------------------------


def seed_path(directory: Path, role: str) -> Path:
    return directory / f"{role}.nk"


def ensure_credentials(directory: Path) -> dict[str, str]:
    """One nkey seed per role under `directory` (created once, mode 0600); returns role -> public key."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    public = {}
    for role in ROLES:
        path = seed_path(directory, role)
        if not path.exists():
            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(seed + b"\n")
        public[role] = public_key(path)
    return public


def cluster_secret(directory: Path) -> str:
    """The password the nodes of one cluster route to each other with (made once, mode 0600): nodes that
    share the credentials folder share it."""
    path = directory / "cluster.secret"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def public_key(seed_file: Path) -> str:
    return nkeys.from_seed(bytearray(seed_file.read_bytes().strip())).public_key.decode()


def check_seed(seed_file: Path) -> None:
    """A clear error for a credential file that holds no nkey seed (nkeys would raise from deep in connect)."""
    try:
        public_key(seed_file)
    except (nkeys.NkeysError, OSError) as exc:
        raise ValueError(f"{seed_file} is no nkey seed file ({exc})") from None


def sign(seed_file: Path, nonce: str) -> tuple[str, str]:
    """(public key, signature of the server's nonce) for a CONNECT made by hand (the pull reader)."""
    pair = nkeys.from_seed(bytearray(seed_file.read_bytes().strip()))
    signature = base64.urlsafe_b64encode(pair.sign(nonce.encode())).rstrip(b"=").decode()
    return pair.public_key.decode(), signature


def authorization(directory: Path, stream: str, bucket: str) -> str:
    """nats-server's authorization block: every role's public key with its permissions (JSON is valid
    nats-server config)."""
    users = [
        {"nkey": key, "permissions": permissions(role, stream, bucket)}
        for role, key in ensure_credentials(directory).items()
    ]
    return "authorization " + json.dumps({"users": users}, indent=1) + "\n"
