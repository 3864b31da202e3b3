"""When a task should try again: on trouble that may pass, never on bad input."""

from __future__ import annotations

from typing import Any

from mlsys.data.s3 import S3Error


def is_transient(exc: BaseException) -> bool:
    """True for errors worth a retry: not bad input (ValueError and its subclasses), not an
    S3 object or credential that is simply missing or refused."""
    if isinstance(exc, ValueError):
        return False
    if isinstance(exc, S3Error):
        return not exc.permanent
    return True


def retry_transient(task: Any, run: Any, state: Any) -> bool:
    """A Prefect ``retry_condition_fn``: retry the failed task run only if its error is
    transient (see :func:`is_transient`)."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


S3_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "retry_condition_fn": retry_transient,
}
"""Task options for tasks that talk to S3 or MLflow: three retries with backoff, only for
transient errors."""
