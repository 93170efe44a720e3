"""How arx's long-running processes log: one setup for every command and for a specialist of your own,
so that each component's log under .arx/logs/ reads the same and shows from its first line that it runs."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def setup_logging() -> None:
    """INFO and above on stderr, with the time and the logger's name (arx.agent, arx.executor, ...)."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
