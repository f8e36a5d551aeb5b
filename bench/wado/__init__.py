"""WADO-RS suite: whole-study retrieve, study metadata, single frames, a 2 GiB study to a slow client."""
