"""Synthetic corpora, generated deterministically and cached.

CT series for STOW, the QIDO population, the retrieve study, and the multipart bodies that carry them.
"""
