"""Logging set-up shared by every command: one line per record, to stderr.

``text`` lines read ``<time> <prefix><LEVEL> <logger>: <message>``; ``json`` lines are one
object each (`pipeline.logformat.JsonFormatter`), the stats line's figures as fields.
"""

from __future__ import annotations

import logging
import sys

from pipeline.logformat import JsonFormatter

__all__ = ["setup_logging"]


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
