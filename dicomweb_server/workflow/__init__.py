"""The workflow context: the study lifecycle, orders, QC, the analysis-worker API, reports and
the change feed (DESIGN.md, "edge contexts").  The lifecycle table is ``lifecycle.py``."""
