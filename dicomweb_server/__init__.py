"""DICOMweb server: STOW-RS ingest into object storage with a PostgreSQL index."""

__version__ = "0.1.0"
