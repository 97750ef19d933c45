"""Logging set-up shared by every command: one line per record, to stderr."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]


def setup_logging(*, prefix: str = "", level: int = logging.INFO) -> None:
    """One line per record, to stderr."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
