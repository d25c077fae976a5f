"""The ``hmpps`` command line: one entry point for every pipeline stage."""
