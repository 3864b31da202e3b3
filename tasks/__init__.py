"""Prefect tasks: thin wrappers that do I/O, tracking and artifacts around engine calls."""
