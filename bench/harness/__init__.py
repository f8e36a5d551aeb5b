"""Harness plumbing shared by every suite.

Process control, targets, sampling, the lean HTTP client, results and report assembly.
"""
