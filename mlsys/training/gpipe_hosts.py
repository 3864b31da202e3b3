"""GPipe across hosts: each pipeline stage on a host of its own, the hosts meeting through
torchrun's c10d rendezvous.

    strategy = GPipeHosts(GPipe(stages=2, microbatches=4), hosts=["10.0.0.1", "10.0.0.2"],
                          launch=launcher)
    result = fit(model, data, strategy=strategy, ...)

This process plans as :class:`~mlsys.training.gpipe.GPipe` does (resume, a dry run, the
balance) and cuts the model into one job per stage. ``launch``, an agent with a foothold on
every host (the train task's is the flows' Dask cluster), calls :func:`run_stage` on each
stage's host with that stage's job. There :func:`run_stage` starts ``torchrun``
(``torch.distributed.run``) as one node of K with one process: the node on the rendezvous
host serves the c10d rendezvous (``is_host=1``), the others join it, and torchrun starts the
stage process (this module, run as ``__main__``). The stage process joins the gloo process
group through the store torchrun made, with its stage index as its rank (torchrun numbers
nodes by the sort order of their addresses, not by the order of ``hosts``), and trains its
stage with the ``_train_stage`` the local stage processes run.

Each stage sends back what its process recorded: the callback events, its files (the last
stage's epoch checkpoints) and, from the last stage, the trained state and history. This
process writes the files where ``fit`` was asked to and replays the events, in order, to the
callbacks, so they see what a local run shows them, once the run has finished.

A stage that fails (an exception, a killed process, a rendezvous that times out) fails the
run with :class:`~mlsys.training.gpipe.StageError` naming the stage and its host; its
neighbours then fail too, their connections to it closed, and say so (``peer``), so that
the launcher can name the cause. torchrun
and the stage process die with the process that called :func:`run_stage`
(``PR_SET_PDEATHSIG``) and are killed when it stops waiting for them.

A stage is done when its process has left its output. torchrun then waits at its exit
barrier for the other nodes, up to 300 seconds when one of them failed or hangs; a stage
whose output is there is not held up by that longer than ``_EXIT_GRACE_S``: torchrun is
stopped and the output returned, so the launcher hears at once from the stage that failed.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import pickle
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from mlsys.lifeline import die_with_parent
from mlsys.training.fit import FitResult, FitSpec
from mlsys.training.gpipe import (
    GPipe,
    StageError,
    _check_positive_int,
    _Job,
    _pickled,
    _train_stage,
)

__all__ = [
    "RENDEZVOUS_PORT",
    "GPipeHosts",
    "HostStage",
    "StageLauncher",
    "StageOutput",
    "check_hosts",
    "parse_endpoint",
    "run_stage",
]

Event = tuple[str, tuple[Any, ...], dict[str, Any]]
"""A callback event a stage recorded: the hook's name, its arguments, its keywords."""

RENDEZVOUS_PORT = 29400
"""torchrun's default c10d rendezvous port; the rendezvous is on the first host unless told."""
JOIN_TIMEOUT_S = 600
"""How long a node waits for the others at the rendezvous before its stage fails."""

_JOB = "stage.pkl"
_RESULT = "result.pkl"
_ERROR = "error.json"
_LOG = "torchrun.log"
_CHECKPOINTS = "checkpoints"
_STOP_GRACE_S = 10.0
_EXIT_GRACE_S = 30.0
"""How long torchrun may go on after its stage process has left its output (at its exit
barrier, waiting for the other nodes) before it is stopped and the output taken."""
_AGENT_PID = "MLSYS_GPIPE_AGENT_PID"
"""The environment variable that tells a stage process its parent's pid (the agent that
runs torchrun in-process)."""
_LOGGER = logging.getLogger(__name__)
_FAULTS = "faults.log"
"""Where the stage process's ``faulthandler`` writes the Python stacks of a native crash."""
_NATIVE_FAILURE = ("terminate called", "what():", "Segmentation fault", "Aborted")
"""Marks of the lines the C++ runtime prints to the log when a stage process dies in
native code (an uncaught C++ exception, a thread left running at exit)."""
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")
"""What gloo says when the stage at the other end of a connection has gone."""


@dataclass(frozen=True)
class HostStage:
    """One stage of a run across hosts, as :func:`run_stage` takes it on the stage's host."""

    stage: int
    stages: int
    host: str
    rendezvous: str
    """``host:port`` of the c10d rendezvous, served by the stage on that host."""
    run_id: str
    job: bytes = field(repr=False)
    """The pickled job of the stage (its layers, the data, the optimizer and loss)."""
    join_timeout_s: int = JOIN_TIMEOUT_S


@dataclass(frozen=True)
class StageOutput:
    """What a stage sends back from its host."""

    stage: int
    address: str
    """The address the stage process reached the rendezvous from: where it ran."""
    events: list[Event]
    files: dict[str, bytes]
    """The stage's files by path under its folder (``checkpoints/epoch-0000.pt``)."""
    outcome: tuple[dict[str, Any], list[Any]] | None
    """The full model state and the history on the last stage; None on the others."""


StageLauncher = Callable[[Sequence[HostStage]], Sequence[StageOutput]]
"""Runs :func:`run_stage` for every stage on its host, all at once, and returns their
outputs; raises :class:`~mlsys.training.gpipe.StageError` when a stage fails."""


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` as its host and port; ValueError naming ``text`` otherwise."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f'rendezvous must be "host:port" with a port 1-65535, got {text!r}')
    return host, int(port)


def check_hosts(hosts: Sequence[str], stages: int, rendezvous: str | None = None) -> str:
    """The rendezvous endpoint (``host:port``, by default the first host's port
    :data:`RENDEZVOUS_PORT`) after checking ``hosts`` against ``stages``; raises ValueError
    naming the bad value.

    A host runs one stage: two stages on one host would be two torchrun nodes of one agent
    there, and the local :class:`~mlsys.training.gpipe.GPipe` serves that case better.
    """
    if isinstance(hosts, str) or len(hosts) != stages:
        raise ValueError(f"hosts must name one host per stage ({stages} stages), got {hosts!r}")
    for host in hosts:
        if not isinstance(host, str) or not host or ":" in host or any(c.isspace() for c in host):
            raise ValueError(
                f"hosts must be host names or IPv4 addresses without a port, got {host!r} "
                f"in {list(hosts)}"
            )
    for i, host in enumerate(hosts):
        if host in hosts[:i]:
            raise ValueError(
                f"hosts {list(hosts)} give {host!r} to stages {hosts.index(host)} and {i}; "
                f"each stage needs a host of its own"
            )
    endpoint = rendezvous if rendezvous is not None else f"{hosts[0]}:{RENDEZVOUS_PORT}"
    host, _ = parse_endpoint(endpoint)
    if host not in hosts:
        raise ValueError(
            f"rendezvous {endpoint!r} is on {host!r}, which is none of the hosts "
            f"{list(hosts)}: the stage on the rendezvous host serves it"
        )
    return endpoint


@dataclass(frozen=True)
class GPipeHosts:
    """:class:`~mlsys.training.gpipe.GPipe` with stage ``s`` on ``hosts[s]``, over gloo on
    the hosts' CPUs; the parameters follow plain training as the local GPipe's do.

    Args:
        gpipe: the pipeline (stages, micro-batches, balance, schedule, checkpointing);
            without ``devices``, ``workers`` or ``trace_dir``.
        hosts: one host name or address per stage, as the stages' hosts reach each other.
        launch: runs :func:`run_stage` on each stage's host (see :data:`StageLauncher`).
        rendezvous: ``host:port`` of torchrun's c10d rendezvous, on one of ``hosts``;
            None: the first host, port :data:`RENDEZVOUS_PORT`.
        join_timeout_s: how long each node waits at the rendezvous for the others.
    """

    gpipe: GPipe
    hosts: Sequence[str]
    launch: StageLauncher = field(compare=False, repr=False)
    rendezvous: str | None = None
    join_timeout_s: int = JOIN_TIMEOUT_S

    @property
    def endpoint(self) -> str:
        """The rendezvous, ``host:port``."""
        return check_hosts(self.hosts, self.gpipe.stages, self.rendezvous)

    def check(self, model: nn.Sequential, spec: FitSpec, n_items: int) -> None:
        """Raise naming the bad value before any host is asked to start anything."""
        self.gpipe.check(model, spec, n_items)
        check_hosts(self.hosts, self.gpipe.stages, self.rendezvous)
        _check_positive_int("join_timeout_s", self.join_timeout_s)
        if self.gpipe.devices is not None:
            raise ValueError(
                f"GPipe across hosts runs every stage on its host's CPU (gloo), but "
                f"devices={list(self.gpipe.devices)} was asked for: pass devices=None"
            )
        if self.gpipe.workers is not None:
            raise ValueError("GPipe across hosts starts its own stage processes: workers=None")
        if self.gpipe.trace_dir is not None:
            raise ValueError(
                "GPipe across hosts keeps no trace: the stages' hosts share no clock to put "
                "their timelines side by side; pass trace_dir=None"
            )

    def run(self, model: nn.Sequential, data: Dataset[Any], spec: FitSpec) -> FitResult:
        """Train stage ``s`` on ``hosts[s]``; ``model`` receives the trained weights."""
        gpipe, k = self.gpipe, self.gpipe.stages
        plan = gpipe._plan(model, data, spec)
        # A stage writes its checkpoints under its own folder on its host.
        on_host = replace(spec, checkpoint_dir=Path(_CHECKPOINTS) if spec.checkpoint_dir else None)
        jobs = _pickled(gpipe._jobs(model, data, on_host, plan))
        endpoint, run_id = self.endpoint, f"mlsys-gpipe-{uuid.uuid4().hex[:12]}"
        calls = [
            HostStage(s, k, host, endpoint, run_id, job, self.join_timeout_s)
            for s, (host, job) in enumerate(zip(self.hosts, jobs, strict=True))
        ]
        outputs = sorted(self.launch(calls), key=lambda output: output.stage)
        if [output.stage for output in outputs] != list(range(k)):
            raise RuntimeError(
                f"the launcher returned the outputs of stages {[o.stage for o in outputs]}, "
                f"not one of each of the {k} stages"
            )
        for output in outputs:
            for name, content in output.files.items():
                _place(name, content, spec.checkpoint_dir)
        for output in outputs:
            for hook, args, kwargs in output.events:
                if hook == "on_checkpoint" and spec.checkpoint_dir is not None:
                    path = spec.checkpoint_dir / PurePosixPath(args[0]).relative_to(_CHECKPOINTS)
                    args = (path, *args[1:])
                spec.emit(hook, *args, **kwargs)
        outcome = outputs[-1].outcome
        if outcome is None:
            raise RuntimeError(f"the last stage ({k - 1}) sent back no model state")
        state, history = outcome
        model.load_state_dict(state)
        return FitResult(model=model.cpu(), history=history)


def _place(name: str, content: bytes, checkpoint_dir: Path | None) -> None:
    """Write a stage's file ``name`` (``checkpoints/...``) under ``checkpoint_dir``."""
    path = PurePosixPath(name)
    if checkpoint_dir is None or path.parts[0] != _CHECKPOINTS or ".." in path.parts:
        raise RuntimeError(f"a stage sent back a file this run did not ask for: {name!r}")
    target = checkpoint_dir.joinpath(*path.parts[1:])
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(content)
    partial.replace(target)


# --- on a stage's host ----------------------------------------------------------------------


def run_stage(
    stage: HostStage, should_stop: Callable[[], bool] | None = None, poll_s: float = 1.0
) -> StageOutput:
    """Run ``stage`` on this host: torchrun as one node of the run, one stage process.

    Blocks until the stage has finished; checks ``should_stop`` every ``poll_s`` seconds
    and, when it says so (another stage failed), stops torchrun and its process.

    Raises:
        StageError: the stage failed, with its host and the stage process's traceback (or
            torchrun's last words when the process never started, e.g. a rendezvous that
            timed out).
    """
    with tempfile.TemporaryDirectory(prefix=f"mlsys-gpipe-stage-{stage.stage}-") as tmp:
        folder = Path(tmp)
        (folder / _JOB).write_bytes(pickle.dumps(stage, protocol=5))
        with (folder / _LOG).open("wb") as log:
            agent = subprocess.Popen(
                _agent_argv(stage, folder),
                cwd=folder,
                env=_stage_env(stage.host),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = _wait(agent, stage, folder / _RESULT, should_stop, poll_s)
            finally:
                _stop(agent)
        if code is None or (code == 0 and (folder / _RESULT).exists()):
            output: StageOutput = pickle.loads((folder / _RESULT).read_bytes())
            return output
        raise _failure(stage, folder, code)


def _wait(
    agent: subprocess.Popen[bytes],
    stage: HostStage,
    result: Path,
    should_stop: Callable[[], bool] | None,
    poll_s: float,
) -> int | None:
    """torchrun's exit code; None when it was still running ``_EXIT_GRACE_S`` after the
    stage process left ``result``."""
    done_at: float | None = None
    while True:
        try:
            return agent.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            pass
        if done_at is None and result.exists():
            done_at = time.monotonic()
        if done_at is not None and time.monotonic() - done_at > _EXIT_GRACE_S:
            _LOGGER.warning(
                "stage %d of %d on host %s finished %.0f s ago and torchrun is still waiting "
                "for the other nodes at its exit barrier: stopping it and taking the output",
                stage.stage, stage.stages, stage.host, _EXIT_GRACE_S,
            )  # fmt: skip
            return None
        if should_stop is not None and should_stop():
            raise StageError(
                stage.stage, stage.stages, f"on host {stage.host}: stopped, another stage failed"
            )


def _agent_argv(stage: HostStage, folder: Path) -> list[str]:
    """torchrun for one node of ``stage.stages``, started through this module so that it
    dies with this process (see :func:`_agent_main`)."""
    host, _ = parse_endpoint(stage.rendezvous)
    torchrun = [
        f"--nnodes={stage.stages}",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-id={stage.run_id}",
        f"--rdzv-endpoint={stage.rendezvous}",
        # Which node serves the rendezvous is said, not guessed: torchrun's guess compares
        # host names, which hosts in containers or namespaces may share.
        f"--rdzv-conf=is_host={int(stage.host == host)},join_timeout={stage.join_timeout_s}",
        f"--local-addr={stage.host}",
        "--max-restarts=0",
        "--module",
        __name__,
        "stage",
        str(folder),
    ]
    return [sys.executable, "-m", __name__, "agent", str(os.getpid()), *torchrun]


def _stage_env(host: str) -> dict[str, str]:
    """This process's environment, with ``GLOO_SOCKET_IFNAME`` set to the interface that
    holds ``host``'s address unless it is set already: gloo otherwise takes the address
    the machine's own name resolves to, which the other hosts may not reach."""
    env = dict(os.environ)
    if "GLOO_SOCKET_IFNAME" not in env:
        interface = _interface_of(host)
        if interface is not None:
            env["GLOO_SOCKET_IFNAME"] = interface
    return env


def _interface_of(host: str) -> str | None:
    import psutil

    try:
        address = socket.gethostbyname(host)
    except OSError:
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addresses):
            return name
    return None


def _stop(agent: subprocess.Popen[bytes]) -> None:
    """Stop torchrun (it stops its stage process) and reap it; kill what is left."""
    if agent.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(agent.pid, sig)
        except ProcessLookupError:
            break
        try:
            agent.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


def _failure(stage: HostStage, folder: Path, code: int) -> StageError:
    where = f"on host {stage.host}"
    report = folder / _ERROR
    if report.exists():
        error = json.loads(report.read_text())
        summary = f"{where}: {error['summary']}"
        return StageError(stage.stage, stage.stages, summary, error["traceback"], error["peer"])
    log = (folder / _LOG).read_text(errors="replace").strip().splitlines()
    last = "\n".join(log[-30:])
    # A stage process that died in native code (an abort, a crash) says so in lines that
    # torchrun's own traceback, at the end of the log, pushes out of the last 30: the C++
    # runtime's, and faulthandler's stacks in a file of their own.
    native = [line for line in log[:-30] if any(mark in line for mark in _NATIVE_FAILURE)]
    faults = folder / _FAULTS
    native += faults.read_text(errors="replace").strip().splitlines() if faults.exists() else []
    earlier = "" if not native else "the stage process's last words:\n" + "\n".join(native[-60:])
    return StageError(
        stage.stage,
        stage.stages,
        f"{where}: torchrun exited with code {code} before the stage process reported",
        f"{earlier}\n\ntorchrun's last lines:\n{last}".strip(),
    )


def _agent_main(parent: int, torchrun: list[str]) -> None:
    """Run torchrun in this process, which Linux kills when ``parent`` (the caller of
    :func:`run_stage`) dies: a killed Dask worker leaves no torchrun behind, and torchrun's
    stage process dies with torchrun."""
    die_with_parent(parent, signal.SIGKILL, 1)
    os.environ[_AGENT_PID] = str(os.getpid())  # torchrun runs here: the stage's parent
    sys.argv = ["torchrun", *torchrun]
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)


def _stage_main(folder: Path) -> None:
    """The stage process torchrun starts: join the process group as rank ``stage``, train
    the stage, and leave its output (or its error) in ``folder``."""
    die_with_parent(int(os.environ[_AGENT_PID]), signal.SIGKILL, 1)
    # An abort or a crash in native code writes the Python stacks there (kept open until
    # the process ends, as faulthandler needs).
    faulthandler.enable(file=(folder / _FAULTS).open("a"))
    os.chdir(folder)
    try:
        stage: HostStage = pickle.loads((folder / _JOB).read_bytes())
        world = int(os.environ["WORLD_SIZE"])
        if world != stage.stages:
            raise ValueError(
                f"torchrun made a world of {world} processes for {stage.stages} stages"
            )
        address = _reaching_address(stage.rendezvous)
        # torchrun's store, with the stage's own rank (torchrun's RANK follows the order
        # of the nodes' addresses); TORCHELASTIC_USE_AGENT_STORE makes every rank a client.
        dist.init_process_group("gloo", init_method="env://", rank=stage.stage, world_size=world)
        events: list[Event] = []

        def emit(hook: str, *args: Any, **kwargs: Any) -> None:
            events.append((hook, args, kwargs))

        job: _Job = pickle.loads(stage.job)
        outcome = _train_stage(job, emit=emit, everyone=False)
        files = {
            path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted((folder / _CHECKPOINTS).rglob("*"))
            if path.is_file()
        }
        output = StageOutput(stage.stage, address, events, files, outcome)
        partial = folder / (_RESULT + ".partial")
        partial.write_bytes(pickle.dumps(output, protocol=5))
        partial.replace(folder / _RESULT)
        dist.destroy_process_group()
    except BaseException as exc:
        report = {
            "summary": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "peer": any(words in str(exc) for words in _PEER_GONE),
        }
        (folder / _ERROR).write_text(json.dumps(report))
        _leave(1)
    _leave(0)


def _leave(code: int) -> NoReturn:
    """End the stage process with ``code`` once its output or error is on disk, without
    the interpreter's teardown: there a c10d thread still running when torch's C++ objects
    are destroyed can abort the process ("terminate called without an active exception",
    with no Python frame: 3 of 22 runs of a hosts test), and torchrun then reports a
    failure for a stage that had finished."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _reaching_address(endpoint: str) -> str:
    """The address of this host that packets to ``endpoint`` leave from (no packet is
    sent: a UDP socket's connect only picks the route)."""
    host, port = parse_endpoint(endpoint)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return str(probe.getsockname()[0])


if __name__ == "__main__":
    # The processes run_stage starts (not a command for users): ``agent PARENT_PID
    # TORCHRUN_ARGS...`` runs torchrun, which runs ``stage FOLDER``. Through the module's
    # import name, so that what they pickle names its classes as run_stage knows them.
    from mlsys.training import gpipe_hosts

    if sys.argv[1] == "agent":
        gpipe_hosts._agent_main(int(sys.argv[2]), sys.argv[3:])
    elif sys.argv[1] == "stage":
        gpipe_hosts._stage_main(Path(sys.argv[2]))
    else:
        raise SystemExit(f"unknown role {sys.argv[1]!r}: agent or stage")
