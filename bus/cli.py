"""`arx server`: make sure a JetStream server answers and holds arx's stream and object store, or start
this host's node of a cluster.

- `arx server`: start the embedded server if none answers at NATS_URL; create the stream and the object
  store (on a cluster that has formed, with ARX_REPLICAS copies, 3 by default).
- `arx server --node NAME --cluster-listen H:P --routes H:P,... [--listen H:P] [--tls]`: write and start
  this home's node of a cluster. The nodes share the home's credentials (and, with --tls, its CA):
  copy `credentials/` and `tls/` from the first node's home to the others before starting them.
"""

from __future__ import annotations

import pathlib

from bus.server import Node, ensure_server, provision, start_node
from bus.settings import load_settings
from bus.tls import ensure_node_cert


def node_from(args, settings) -> Node:
    """The node the arguments describe; a clear error for a half-described one."""
    if args.node and not (args.cluster_listen and args.routes):
        raise ValueError("a cluster node (--node) needs --cluster-listen and --routes")
    if not args.node and (args.cluster_listen or args.routes):
        raise ValueError("--cluster-listen and --routes describe a cluster node: name it with --node")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    listen = args.listen or f"127.0.0.1:{settings.embedded_port}"
    if not listen.rsplit(":", 1)[-1].isdigit():
        raise ValueError(f"--listen {listen}: give HOST:PORT")
    cert, key, ca = args.tls_cert, args.tls_key, settings.tls_ca
    if args.tls and not cert:
        host = listen.rsplit(":", 1)[0].strip("[]")
        cert, key = ensure_node_cert(settings.home / "tls", args.node or "server", [host, *args.tls_host])
        ca = settings.home / "tls" / "ca.pem"
    return Node(
        listen=listen, name=args.node, cluster=args.cluster if args.node else None,
        cluster_listen=args.cluster_listen, routes=tuple(r.strip() for r in args.routes.split(",") if r.strip()),
        tls_cert=cert and cert.absolute(), tls_key=key and key.absolute(), tls_ca=ca and ca.absolute(),
    )


def serve_arguments(parser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="where clients reach this node (default 127.0.0.1:$ARX_NATS_PORT; 0.0.0.0:4222 for all hosts)")
    parser.add_argument("--node", metavar="NAME", help="this node's name in its cluster (makes it a cluster node)")
    parser.add_argument("--cluster", default="arx", help="the cluster's name (default: arx)")
    parser.add_argument("--cluster-listen", metavar="HOST:PORT", help="where the other nodes' routes reach this one")
    parser.add_argument("--routes", metavar="HOST:PORT,...", default="",
                        help="every node's --cluster-listen address (this node's own may be among them)")
    parser.add_argument("--tls", action="store_true",
                        help="speak TLS: a private CA and this node's certificate under $ARX_HOME/tls (made once)")
    parser.add_argument("--tls-host", action="append", default=[], metavar="NAME",
                        help="with --tls: another name or address clients reach this node by (repeatable)")
    parser.add_argument("--tls-cert", type=pathlib.Path, help="a certificate of your own for this node (with --tls-key)")
    parser.add_argument("--tls-key", type=pathlib.Path, help="the key of --tls-cert")


def serve(args) -> int:
    settings = load_settings()
    if args.listen or args.node or args.tls or args.tls_cert:
        node = node_from(args, settings)
        start_node(settings, node)
        print(node.client_url)
        return 0
    url = ensure_server(settings, start=True)
    provision(settings, url)  # a server or a cluster someone else runs gets arx's stream and object store too
    print(url)
    return 0
