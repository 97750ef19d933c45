"""The benchmark's command line refuses what it cannot do before it starts anything."""

from __future__ import annotations

import pytest

from pipeline.dev.bench.cli import build_parser, run_bench
from pipeline.errors import ConfigError


def test_skip_names_every_contender_and_part_it_takes() -> None:
    args = build_parser().parse_args(["--quick", "--skip", "cluster,bogus"])

    with pytest.raises(ConfigError) as refused:
        run_bench(args)

    message = str(refused.value)
    assert message.endswith("got bogus"), message  # "cluster" is known: a part of the run
    for known in ("relay-1", "naive", "worker-2", "share", "cluster"):
        assert known in message, message
