"""What `pipeline run` and `pipeline serve` do before they start: settings from the command
line, environment and file; ``--print-config``; logging as the settings say."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

from pipeline.config import Settings, load_settings
from pipeline.flags import setting_flags
from pipeline.logs import setup_logging

__all__ = ["print_config", "settings_from_args", "start_logging"]


def settings_from_args(
    cls: type[Settings],
    args: argparse.Namespace,
    *,
    local_broker: Callable[[], str | None] | None = None,
) -> Settings:
    """Build `cls` from the parsed flags, the environment and the ``--config`` file (and,
    where none names the bootstrap servers, `local_broker`'s address)."""
    return load_settings(
        cls,
        setting_flags(args),
        config_file=args.config,
        properties=getattr(args, "X", None) or (),
        local_broker=local_broker,
    )


def print_config(settings: Any, out: TextIO = sys.stdout) -> int:
    """Print the effective settings as JSON (secrets masked); return exit code 0."""
    out.write(json.dumps(settings.redacted, indent=2, default=str) + "\n")
    out.flush()
    return 0


def start_logging(settings: Any, *, prefix: str = "") -> None:
    """Log at the settings' level, in their format."""
    setup_logging(
        prefix=prefix,
        level=logging.getLevelName(settings.log_level.upper()),
        fmt=settings.log_format,
    )
