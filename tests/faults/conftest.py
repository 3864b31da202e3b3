"""The fault tests' stack: one per test module, its own, since its services get killed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.config import StackSettings
from infra.runs import trigger
from infra.stack import down, up
from tests.conftest import stack_settings
from tests.faults.helpers import TOLERANCE_S, UNRESPONSIVE_S


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackSettings]:
    """A stack of its own (its services get killed), with a short outage tolerance and
    unresponsive-run limit, and
    one raw batch ingested (``raw/youtube-spam/base.parquet``)."""
    settings = stack_settings(
        tmp_path_factory.mktemp("fault-stack"),
        outage_tolerance_s=TOLERANCE_S,
        unresponsive_after_s=UNRESPONSIVE_S,
    )
    try:
        settings = up(settings, timeout_s=180, say=lambda line: None)
        # This stack's MLflow credential for the module, the one before put back after
        # (an earlier module's stack has another).
        with settings.mlflow_credentials():
            first = trigger(settings, "ingest/ingest", {"batch": "base"}, say=lambda _: None)
            assert first.state == "COMPLETED", first.message
            yield settings
    finally:
        down(settings, say=lambda line: None)
