"""`arx server`: make sure a JetStream server answers (starting the embedded one if needed) and holds
arx's stream and object store."""

from __future__ import annotations

from bus.server import ensure_server, provision
from bus.settings import load_settings


def serve(args) -> int:
    settings = load_settings()
    url = ensure_server(settings)
    provision(settings, url)  # a server someone else runs gets arx's stream and object store too
    print(url)
    return 0
