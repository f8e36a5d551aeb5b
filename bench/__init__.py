"""Black-box HTTP benchmark harness for DICOMweb servers (run: python -m bench.run)."""
