"""`make bench`'s micro-benchmark runs, small: every codec figure comes out positive and
the target lines name each target (the figures themselves are the bench's to show)."""

from __future__ import annotations

from pipeline.dev.bench import micro


def test_the_codec_micro_benchmark_gives_every_figure_and_target_line() -> None:
    figures = micro.bench_codec(n_events=1000, repeats=1)
    numbers = [v for v in figures.values() if isinstance(v, float)]
    assert len(numbers) == 8 and all(v > 0 for v in numbers), figures
    assert all(v > 0 for v in figures["parse_us"].values())
    lines = micro._target_lines(figures, {})
    assert [line.split(":")[0] for line in lines] == [
        "decode+encode <= 6 us/event",
        "framed Avro decode <= JSON's",
        "MLP batch 256 >= 20x batch 1",
    ]
