"""``python -m pipeline.bench``: the side-by-side benchmark (see `pipeline.bench.cli`)."""

from pipeline.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
