"""Process records: start, stop with children, and never touch a process not ours."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from infra import process


def test_spawn_records_and_stop_kills_children(tmp_path: Path) -> None:
    # A parent that starts a child, like MLflow's server starting uvicorn.
    script = "import subprocess,time; subprocess.Popen(['sleep','60']); time.sleep(60)"
    record = process.spawn(
        tmp_path, "svc", [sys.executable, "-c", script], env={"PATH": "/usr/bin:/bin"}
    )
    deadline = time.monotonic() + 10
    while not psutil.Process(record.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    children = psutil.Process(record.pid).children(recursive=True)
    assert children, "the child process never started"
    assert process.read_record(tmp_path, "svc") == record
    assert process.stop(record, timeout_s=5) is True
    assert not record.alive()
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_stop_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        forged = process.ProcessRecord("svc", other.pid, create_time=1.0, argv0="sleep")
        assert not forged.alive()
        assert process.stop(forged) is False
        assert other.poll() is None, "a process we did not start was killed"
    finally:
        other.kill()
        other.wait()


def test_spawn_logs_output(tmp_path: Path) -> None:
    record = process.spawn(
        tmp_path, "echo", [sys.executable, "-c", "print('hello from svc')"], env={}
    )
    psutil.Process(record.pid).wait(timeout=10)
    assert "hello from svc" in process.tail(process.log_path(tmp_path, "echo"), 5)


def test_missing_or_corrupt_record_reads_as_none(tmp_path: Path) -> None:
    assert process.read_record(tmp_path, "nothing") is None
    path = process.pid_path(tmp_path, "bad")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert process.read_record(tmp_path, "bad") is None
