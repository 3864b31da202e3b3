"""Flow-run hooks that keep run states truthful when a run ends badly."""

from __future__ import annotations

from typing import Any


def close_stage_runs(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_failure`` / ``on_crashed`` hook: mark CRASHED the stage (subflow) runs of this
    run still RUNNING when it ended.

    A stage whose final state could not be reported (the Prefect server was down when it
    failed) would otherwise stay RUNNING for good under a parent that has ended; its
    message names the parent and why it ended.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        # Subflow runs point at their parent through a task run of the parent's.
        stuck = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id]),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                ),
            )
        )
        why = f"{flow_run.name} ended {state.name}" + (
            f" ({state.message})" if state.message else ""
        )
        for run in stuck:
            client.set_flow_run_state(
                run.id, Crashed(message=f"{why} while this stage ran"), force=True
            )


STAGE_HOOKS: dict[str, Any] = {
    "on_failure": [close_stage_runs],
    "on_crashed": [close_stage_runs],
}
"""Flow options of a flow that runs stages as subflows (``@flow(..., **STAGE_HOOKS)``)."""
