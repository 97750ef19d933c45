"""Logging set-up shared by every command: one line per record, to stderr.

``text`` lines read ``<time> <prefix><LEVEL> <logger>: <message>``; ``json`` lines are one
object each (`pipeline.logformat.JsonFormatter`), the stats line's figures as fields.
"""

from __future__ import annotations

import logging
import sys

from pipeline.logformat import JsonFormatter

__all__ = ["report_error", "setup_logging"]


def setup_logging(*, prefix: str = "", level: int = logging.INFO, fmt: str = "text") -> None:
    """One line per record, to stderr, at `level` and above, as ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process_name=prefix.strip() or None))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for chatty in _CHATTY:
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))


_CHATTY = ("httpx", "httpx2", "httpcore")
"""Libraries that log every request at INFO: the Schema Registry client's HTTP requests
(confluent-kafka's own copy of httpx logs as ``httpx2``). Their warnings still show."""


def report_error(message: str) -> None:
    """A command's closing error: ``error: <message>`` on stderr, or, once logging is set
    to ``json``, an error record like every other line."""
    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.getLogger("pipeline").error("%s", message)
    else:
        print(f"error: {message}", file=sys.stderr)
