"""Start, record and stop the stack's processes by pid file, and nothing else."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcessRecord:
    """What `down` needs to find exactly the process `up` started.

    ``create_time`` guards against pid reuse: a pid whose process started at
    another time is somebody else's, and is left alone.
    """

    name: str
    pid: int
    create_time: float
    argv0: str

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return (
                abs(proc.create_time() - self.create_time) < 0.5
                and proc.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


def pid_path(stack_dir: Path, name: str) -> Path:
    return stack_dir / "pids" / f"{name}.json"


def log_path(stack_dir: Path, name: str) -> Path:
    return stack_dir / "logs" / f"{name}.log"


def read_record(stack_dir: Path, name: str) -> ProcessRecord | None:
    path = pid_path(stack_dir, name)
    if not path.is_file():
        return None
    try:
        return ProcessRecord(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def spawn(
    stack_dir: Path,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> ProcessRecord:
    """Start ``argv`` in its own session, output appended to ``logs/<name>.log``."""
    log = log_path(stack_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_path(stack_dir, name).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==> {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {argv[0]}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    record = ProcessRecord(name, proc.pid, psutil.Process(proc.pid).create_time(), argv[0])
    path = pid_path(stack_dir, name)
    path.write_text(json.dumps(asdict(record)))
    return record


def stop(record: ProcessRecord, timeout_s: float = 15.0) -> bool:
    """Stop the recorded process and every process it started; True if it was running.

    SIGTERM first (servers flush and close), SIGKILL for whatever outlives the timeout.
    """
    if not record.alive():
        return False
    leader = psutil.Process(record.pid)
    try:
        family = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        family = [leader]
    for proc in family:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return True


def forget(stack_dir: Path, name: str) -> None:
    pid_path(stack_dir, name).unlink(missing_ok=True)


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file ('' if it doesn't exist)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 256 * 1024))
        data = f.read().decode(errors="replace")
    return "\n".join(data.splitlines()[-lines:])
