"""Start, record and stop the stack's processes, and nothing else.

Each service runs in a process group of its own (its leader's pid), so stopping it stops
every process it started; each carries two environment variables, ``MLSYS_STACK_DIR``
and ``MLSYS_STACK_SERVICE``, so that leftovers of a crashed stack are found by the stack
folder they belong to, never by a program name that another user's process may share.
"""

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

from mlsys.atomic import write_text_atomic

STACK_DIR_ENV = "MLSYS_STACK_DIR"
SERVICE_ENV = "MLSYS_STACK_SERVICE"


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
    pgid: int | None = None
    stack_dir: str | None = None

    def owns(self, proc: psutil.Process) -> bool:
        """Whether ``proc`` carries this service's marker (a member of its group that is
        not somebody else's process in a reused group id)."""
        return _marker(proc) == (self.stack_dir, self.name)

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
    """Start ``argv`` in a session and process group of its own, output appended to
    ``logs/<name>.log``; files it creates are its user's only (umask 077)."""
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
            env={**env, STACK_DIR_ENV: str(stack_dir.resolve()), SERVICE_ENV: name},
            cwd=cwd,
            start_new_session=True,
            umask=0o077,
        )
    create_time = psutil.Process(proc.pid).create_time()
    record = ProcessRecord(
        name, proc.pid, create_time, argv[0], pgid=proc.pid, stack_dir=str(stack_dir.resolve())
    )
    path = pid_path(stack_dir, name)
    # Atomic: `status` or another `up` reading it meanwhile sees the whole record or none.
    write_text_atomic(path, json.dumps(asdict(record)))
    return record


def stop(record: ProcessRecord, timeout_s: float = 15.0) -> bool:
    """Stop the recorded process, its process group and every process it started; True
    if any of them was running.

    SIGTERM first (servers flush and close), SIGKILL for whatever outlives the timeout.
    The group is signalled even when the leader is gone (killed with SIGKILL, its
    children keep the group), but only while a member still carries the stack's marker.
    """
    family: list[psutil.Process] = []
    if record.alive():
        leader = psutil.Process(record.pid)
        family.append(leader)
        with contextlib.suppress(psutil.Error):
            family.extend(leader.children(recursive=True))
    if record.pgid is not None:
        known = {f.pid for f in family}
        family.extend(p for p in _group(record.pgid) if p.pid not in known and record.owns(p))
    return terminate(family, timeout_s)


def terminate(procs: Sequence[psutil.Process], timeout_s: float = 15.0) -> bool:
    """SIGTERM ``procs``, then SIGKILL those alive after ``timeout_s``; True if any ran."""
    procs = [p for p in procs if _running(p)]
    if not procs:
        return False
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return True


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group(pgid: int) -> list[psutil.Process]:
    """Live members of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and _running(proc):
                members.append(proc)
    return members


def _marker(proc: psutil.Process) -> tuple[str | None, str | None]:
    """(stack folder, service) a process of some stack was started with, or Nones."""
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None, None
    return env.get(STACK_DIR_ENV), env.get(SERVICE_ENV)


def leftovers(stack_dir: Path, name: str | None = None) -> list[psutil.Process]:
    """Processes started for this stack folder (and service ``name``, if given) that its
    pid records no longer account for: what a crashed `up` or a killed leader left."""
    folder = str(stack_dir.resolve())
    recorded: set[int] = set()
    for service in _recorded_names(stack_dir):
        record = read_record(stack_dir, service)
        if record is not None and record.alive():
            recorded.add(record.pid)
            with contextlib.suppress(psutil.Error):
                recorded.update(c.pid for c in psutil.Process(record.pid).children(True))
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me or proc.pid in recorded:
            continue
        stack, started_as = _marker(proc)
        ours = stack == folder and started_as is not None and name in (None, started_as)
        if ours and _running(proc):
            found.append(proc)
    return found


def _recorded_names(stack_dir: Path) -> list[str]:
    return [p.stem for p in (stack_dir / "pids").glob("*.json")]


def listener(host: str, port: int) -> psutil.Process | None:
    """The process listening on ``host:port`` over TCP, if this user may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.laddr.ip in (host, "0.0.0.0", "::") and conn.pid is not None:
            with contextlib.suppress(psutil.Error):
                return psutil.Process(conn.pid)
    return None


def family_pids(record: ProcessRecord) -> set[int]:
    """The recorded process, its descendants and its group: the pids that are "ours"."""
    pids: set[int] = set()
    if record.alive():
        pids.add(record.pid)
        with contextlib.suppress(psutil.Error):
            pids.update(c.pid for c in psutil.Process(record.pid).children(recursive=True))
    if record.pgid is not None:
        pids.update(p.pid for p in _group(record.pgid) if record.owns(p))
    return pids


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
