"""``python -m pipeline.dev.bench``: the side-by-side benchmark (see `pipeline.dev.bench.cli`)."""

from pipeline.dev.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
