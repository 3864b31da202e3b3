"""A Prefect client for the stack's API, with its URL and credential."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlsys.settings import Settings


@contextmanager
def prefect_settings(settings: Settings) -> Iterator[None]:
    """Prefect's own settings pointed at the stack's API for the duration: its URL and,
    where the API has one, its credential (Prefect reads both when a client is made)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates: dict[Any, Any] = {PREFECT_API_URL: settings.api_url}
    if settings.prefect_auth_string is not None:
        updates[PREFECT_API_AUTH_STRING] = settings.prefect_auth_string.get_secret_value()
    with temporary_settings(updates=updates):
        yield


@contextmanager
def prefect_client(settings: Settings) -> Iterator[Any]:
    """A synchronous Prefect client of the stack's API."""
    from prefect.client.orchestration import get_client

    with prefect_settings(settings), get_client(sync_client=True) as client:
        yield client
