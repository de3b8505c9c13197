"""`make bench`: scapgate measured side by side with its baselines, in the same run.

Each section compares a figure with a baseline measured in the same run (interleaved where
the two can take turns) and reports the ratio with both absolute numbers beside it, because
the build machines have 2 cores shared with other test suites and absolute numbers drift.
Entry point: `python -m benchmarks.run` (writes BENCHMARKS.md). Traffic goes to 127.0.0.1
only; every loop is bounded in count and time.
"""
