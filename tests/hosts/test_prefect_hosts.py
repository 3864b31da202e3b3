"""A Prefect worker on another host (`mlsys stack worker`, started there with the stack's
settings as `source .stack/env` gives them) takes a deployment's run from the stack's work
pool and runs it in the checkout, which the hosts share (network namespaces, see
:mod:`tests.hosts.netns`). The test's stack serves the host from this machine's address on
the hosts' switch; the stack's own worker is stopped first, so only the other host's can
take the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mlsys.data.catalog import raw_key
from mlsys.data.s3 import list_keys
from tests.conftest import stack_settings
from tests.hosts.netns import Hosts, unavailable

why_not = unavailable()
pytestmark = [
    pytest.mark.skipif(why_not is not None, reason=why_not or ""),
    pytest.mark.timeout(1800),
]

MLSYS = str(Path(sys.executable).with_name("mlsys"))
WORKER = "host-0-worker"


def test_a_worker_on_another_host_runs_a_deployment(tmp_path: Path) -> None:
    from infra import process
    from infra.runs import trigger
    from infra.services import PrefectWorker
    from infra.stack import down, up

    with Hosts(1) as hosts:
        here = hosts.join_this_machine()
        stack = stack_settings(tmp_path / "stack", host=here)
        try:
            stack = up(stack, timeout_s=300, say=lambda line: None)
            own = process.read_record(stack.stack_dir, "prefect-worker")
            assert own is not None and process.stop(own)

            # What a shell on the other host has after `source .stack/env`: the stack's
            # endpoints (at this machine's address on the switch) and credentials.
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(tmp_path),
                **stack.shell_env(),
            }
            log = tmp_path / "host-worker.log"
            with log.open("w") as out:
                worker = hosts.popen(
                    0,
                    [MLSYS, "stack", "worker", "--name", WORKER,
                     "--stack-dir", str(tmp_path / "host-0")],
                    env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            deadline = time.monotonic() + 180
            while not PrefectWorker(stack, worker_name=WORKER).healthy():
                assert worker.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(1)
            # (The API lists the stack's stopped worker ONLINE until its heartbeat lapses;
            # its process is gone, so no run can start there.)
            assert not psutil.pid_exists(own.pid)

            outcome = trigger(
                stack, "ingest/ingest", {"batch": "from-host-0"}, timeout_s=900, say=print
            )
            text = log.read_text()
            assert outcome.state == "COMPLETED", (outcome.message, text[-4000:])
            assert outcome.flow_run_id in text  # the other host's worker submitted it
            key = raw_key("youtube-spam", "from-host-0")
            assert [k for _, k in list_keys(stack.s3_client(), stack.bucket, key)] == [key]
            worker.terminate()
            assert worker.wait(timeout=60) in (0, -15, 143)
        finally:
            down(stack, say=lambda line: None)
