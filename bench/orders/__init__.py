"""The orders suite (issue #12 "Benchmark"): claims, stability latency, listings at 1M, the feed."""
