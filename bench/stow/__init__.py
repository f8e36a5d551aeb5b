"""STOW-RS suite: one series per request at two instance sizes, and one huge streamed body."""
