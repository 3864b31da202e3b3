"""A stage's process told to exit is reported as a crash naming the stage."""

from __future__ import annotations

import pytest

from tasks.stages import StageAborted, naming_stage


def test_system_exit_becomes_stage_aborted_naming_the_stage() -> None:
    aborted = pytest.raises(StageAborted, match=r"SystemExit 1\) during stage train")
    with aborted as caught, naming_stage("train"):
        raise SystemExit(1)
    assert isinstance(caught.value.__cause__, SystemExit)
    # Still outside Exception, as SystemExit is: Prefect records a crash, not a failure.
    assert not isinstance(caught.value, Exception)


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(ValueError, match="bad batch"), naming_stage("ingest"):
        raise ValueError("bad batch")
    with pytest.raises(KeyboardInterrupt), naming_stage("ingest"):
        raise KeyboardInterrupt
