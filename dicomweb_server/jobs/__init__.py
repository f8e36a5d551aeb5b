"""Background work: one runner per process, hosting the processors each context exports."""
