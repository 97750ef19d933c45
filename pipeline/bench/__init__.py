"""Benchmarks of the pipeline's parts (`micro`): measured figures, never pass/fail tests."""
