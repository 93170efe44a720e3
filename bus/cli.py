"""`arx server`: make sure a JetStream server answers, starting the embedded one if needed."""

from __future__ import annotations

from bus.server import ensure_server
from bus.settings import load_settings


def serve(args) -> int:
    print(ensure_server(load_settings()))
    return 0
