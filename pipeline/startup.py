"""What `pipeline run` and `pipeline serve` do before they start: settings from the command
line, environment and file; ``--print-config``; logging as the settings say; a SIGTERM or
SIGINT that arrives meanwhile, remembered."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

from pipeline.config import Settings, load_settings
from pipeline.flags import setting_flags
from pipeline.logs import setup_logging

__all__ = [
    "early_stop",
    "print_config",
    "remember_early_stop",
    "settings_from_args",
    "start_logging",
]


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


_early: list[signal.Signals] = []  # the signal that came while starting, if one did


def remember_early_stop() -> None:
    """From here until the command installs its own handlers, a SIGTERM or SIGINT is
    remembered instead of ending the process: imports, model loading and warm-up can take
    seconds, and an orchestrator stops a process whenever it likes. The command asks
    `early_stop` once its handlers are in place and stops at once, exiting 0 as it would
    a moment later. A signal its parent left blocked (one that was pending while this
    process started) is unblocked here and remembered too."""
    stops = (signal.SIGTERM, signal.SIGINT)
    for signum in stops:
        signal.signal(signum, lambda s, _: _early.append(signal.Signals(s)))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)


def early_stop() -> signal.Signals | None:
    """The signal that arrived while starting (see `remember_early_stop`), or None."""
    return _early[0] if _early else None
