"""Access suite: what the token guard plus the rate limiter add to a QIDO-RS search (p50)."""
