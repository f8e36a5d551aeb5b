"""QIDO-RS suite: query types counted from the population model.

The 20k (STOW-loaded) and 1M (COPYed) scenarios, and EXPLAIN of our SQL.
"""
