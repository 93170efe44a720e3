"""`arx ui`: the live lineage.db in the browser. Datasette serves it read-only with arx's metadata
(ui_metadata.py) and plugin (ui_plugin.py: the campaign report as a page, diffs and logs as text).

It listens on loopback unless --host says otherwise, and then says what it exposes. It needs the
optional `ui` extra (`pip install -e '.[ui]'`, or `scripts/setup.sh --ui`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from pathlib import Path

from projections.audit import open_lineage
from projections.projector import db_path
from projections.ui_metadata import DATABASE, REPORT_PATH, metadata

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8001
# No browser cache: a reload shows what the projector folded since.
SETTINGS = {"default_cache_ttl": 0}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may well resolve beyond this machine
        return False


def exposure(address: str, port: int, path: Path) -> str:
    """What a listener beyond loopback exposes, said before it starts."""
    return (
        f"arx ui: listening on {address}, which is not loopback: whoever reaches it reads every campaign in"
        f" {path} (hypotheses, diffs, scores, gates, log tails) and may run read-only SQL on it, with no"
        " login; nobody can write through it. From another machine, an SSH tunnel keeps it on loopback:"
        f" ssh -L {port}:127.0.0.1:{port} HOST"
    )


def build(path: Path):
    """A Datasette instance serving the lineage file at path read-only, with arx's metadata and plugin."""
    from datasette.app import Datasette
    from datasette.plugins import pm

    from projections import ui_plugin
    from projections.ui_database import LiveLineage

    if not pm.is_registered(ui_plugin):
        pm.register(ui_plugin, name="arx")
    datasette = Datasette(metadata=metadata(), settings=SETTINGS)
    datasette.remove_database("_memory")  # added when no file is given: arx serves only the lineage
    datasette.add_database(LiveLineage(datasette, path), name=DATABASE)
    return datasette


async def serve(datasette, listener: socket.socket) -> None:
    import uvicorn

    await datasette.invoke_startup()
    config = uvicorn.Config(datasette.app(), log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve(sockets=[listener])


def cli_arguments(parser) -> None:
    parser.add_argument("--db", help="lineage database (default: $ARX_HOME/lineage.db)")
    parser.add_argument("--host", default=LOOPBACK,
                        help=f"address to listen on (default {LOOPBACK}: this machine only; any other says what it"
                        " exposes)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free port")


def cli(args) -> int:
    path = db_path(args)
    if not path.is_file():
        raise RuntimeError(f"no lineage database at {path}: start `arx projector` (or scripts/up.sh) first")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: give 0 to 65535")
    open_lineage(str(path)).close()  # a file that is no lineage, or an outdated one, is said now, not as a 500
    try:
        datasette = build(path)
    except ImportError as exc:
        raise RuntimeError(f"needs the ui extra ({exc}): pip install -e '.[ui]', or scripts/setup.sh --ui") from None
    # Bound before the address is printed: whoever reads it can connect at once.
    ipv6 = ":" in args.host
    listener = socket.create_server((args.host, args.port), family=socket.AF_INET6 if ipv6 else socket.AF_INET)
    port = listener.getsockname()[1]
    address = f"[{args.host}]:{port}" if ipv6 else f"{args.host}:{port}"
    if not is_loopback(args.host):
        print(exposure(address, port, path), file=sys.stderr, flush=True)
    print(f"arx ui: http://{address}/ serves {path} read-only; the campaign report: http://{address}{REPORT_PATH}",
          flush=True)
    asyncio.run(serve(datasette, listener))
    return 0
