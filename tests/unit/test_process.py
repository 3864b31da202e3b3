"""Process records: start, stop with children, and never touch a process not ours."""

from __future__ import annotations

import os
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


def _wait_for(check: object, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def test_a_killed_leader_leaves_children_that_stop_and_leftovers_find(tmp_path: Path) -> None:
    """kill -9 of a server's recorded pid leaves its worker serving (as uvicorn under
    `mlflow server`); stop() still ends the group, and leftovers() finds the orphan by
    the stack folder it was started for."""
    script = "import subprocess,time; subprocess.Popen(['sleep','120']); time.sleep(120)"
    record = process.spawn(
        tmp_path, "svc", [sys.executable, "-c", script], env={"PATH": "/usr/bin:/bin"}
    )
    _wait_for(lambda: psutil.Process(record.pid).children())
    child = psutil.Process(record.pid).children()[0]
    psutil.Process(record.pid).kill()
    psutil.Process(record.pid).wait(timeout=10)
    assert not record.alive() and child.is_running()
    assert [p.pid for p in process.leftovers(tmp_path, "svc")] == [child.pid]
    assert process.leftovers(tmp_path, "other") == []
    assert process.leftovers(tmp_path / "elsewhere", "svc") == []
    assert child.pid in process.family_pids(record)
    assert process.stop(record, timeout_s=5) is True
    child.wait(timeout=10)
    assert process.leftovers(tmp_path, "svc") == []


def test_spawned_files_are_private(tmp_path: Path) -> None:
    script = "open('made-by-service.txt', 'w').write('x')"
    record = process.spawn(tmp_path, "w", [sys.executable, "-c", script], env={}, cwd=tmp_path)
    psutil.Process(record.pid).wait(timeout=10)
    assert (tmp_path / "made-by-service.txt").stat().st_mode & 0o077 == 0


def test_listener_names_the_process_on_a_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        holder = process.listener("127.0.0.1", port)
        assert holder is not None and holder.pid == os.getpid()
