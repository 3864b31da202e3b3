"""Prefect flows: composition of tasks only, one module per flow."""
