"""GPipe across hosts (mlsys.training.gpipe_hosts, tasks.gpipe_hosts): the trainer's hosts
and rendezvous checked before any work, each error naming the value; two torchrun nodes on
this machine's loopback addresses train as plain training does; a stage that fails names
its stage and host and leaves no process behind."""

from __future__ import annotations

import functools
import pickle
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import TensorDataset

from flows.options import TrainOptions
from mlsys.training import Callback, StageError, fit, gpipe_hosts
from mlsys.training.gpipe import GPipe
from mlsys.training.gpipe_hosts import (
    GPipeHosts,
    HostStage,
    StageOutput,
    check_hosts,
    parse_endpoint,
    run_stage,
)
from mlsys.training.trainers import GPipeTrainer
from tasks.gpipe_hosts import _worker_on, hosts_strategy
from tests.conftest import closed_port

HOSTS = ["10.0.0.1", "10.0.0.2"]


def gpipe(**fields: Any) -> GPipeTrainer:
    return GPipeTrainer.model_validate({"kind": "gpipe", "stages": 2, **fields})


def test_hosts_and_rendezvous_are_trainer_options_with_the_first_host_as_default() -> None:
    trainer = gpipe(hosts=HOSTS)
    assert trainer.hosts == HOSTS and trainer.rendezvous is None
    assert check_hosts(HOSTS, 2) == "10.0.0.1:29400"
    assert check_hosts(HOSTS, 2, "10.0.0.2:1234") == "10.0.0.2:1234"
    assert trainer.params() == {"trainer": "gpipe", "stages": 2, "microbatches": 4,
                                "hosts": HOSTS}  # fmt: skip
    assert gpipe().params() == {"trainer": "gpipe", "stages": 2, "microbatches": 4}
    options = TrainOptions.model_validate(
        {"trainer": {"kind": "gpipe", "hosts": HOSTS, "rendezvous": "10.0.0.2:29500"},
         "hidden": [64]}
    )  # fmt: skip
    assert options.trainer == gpipe(hosts=HOSTS, rendezvous="10.0.0.2:29500")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hosts": ["10.0.0.1"]}, r"one host per stage \(2 stages\), got \['10.0.0.1'\]"),
        ({"hosts": HOSTS, "stages": 3}, r"one host per stage \(3 stages\)"),
        ({"hosts": ["10.0.0.1", "10.0.0.1"]}, r"give '10.0.0.1' to stages 0 and 1"),
        ({"hosts": ["10.0.0.1", "10.0.0.2:22"]}, r"without a port, got '10.0.0.2:22'"),
        ({"hosts": ["10.0.0.1", ""]}, r"without a port, got ''"),
        ({"hosts": HOSTS, "rendezvous": "10.0.0.1"}, r"\"host:port\".*got '10.0.0.1'"),
        ({"hosts": HOSTS, "rendezvous": "10.0.0.1:http"}, r"got '10.0.0.1:http'"),
        ({"hosts": HOSTS, "rendezvous": "10.0.0.1:70000"}, r"got '10.0.0.1:70000'"),
        ({"hosts": HOSTS, "rendezvous": "10.0.0.9:29400"}, r"'10.0.0.9', which is none of"),
        ({"rendezvous": "10.0.0.1:29400"}, r"rendezvous='10.0.0.1:29400' is for stages on sev"),
    ],
)
def test_bad_hosts_or_rendezvous_are_refused_naming_the_value(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        gpipe(**fields)


def test_parse_endpoint_splits_host_and_port() -> None:
    assert parse_endpoint("node-1.example:29400") == ("node-1.example", 29400)
    with pytest.raises(ValueError, match="got ':29400'"):
        parse_endpoint(":29400")


def test_the_train_task_needs_a_cluster_and_the_strategy_a_launcher(tmp_path: Path) -> None:
    trainer = gpipe(hosts=HOSTS)
    with pytest.raises(ValueError, match=r"hosts=\['10.0.0.1', '10.0.0.2'\] needs a launcher"):
        trainer.strategy(tmp_path)
    with pytest.raises(ValueError, match="set MLSYS_DASK_ADDRESS"):
        hosts_strategy(trainer, tmp_path, None)
    strategy = hosts_strategy(trainer, tmp_path, "tcp://10.0.0.9:8786")
    assert isinstance(strategy, GPipeHosts)
    assert strategy.hosts == HOSTS and strategy.endpoint == "10.0.0.1:29400"
    assert strategy.gpipe.trace_dir is None
    assert isinstance(gpipe().strategy(tmp_path), GPipe)


def test_a_stage_goes_to_a_worker_of_its_host_or_the_error_names_the_hosts_there_are() -> None:
    workers = {
        "tcp://10.0.0.2:4001": {"host": "10.0.0.2"},
        "tcp://10.0.0.1:4002": {"host": "10.0.0.1"},
        "tcp://10.0.0.1:4000": {"host": "10.0.0.1"},
    }
    stage = HostStage(0, 2, "10.0.0.1", "10.0.0.1:29400", "run", b"")
    assert _worker_on(stage, workers, "tcp://sched:8786") == "tcp://10.0.0.1:4000"
    lonely = HostStage(1, 2, "10.0.0.7", "10.0.0.1:29400", "run", b"")
    with pytest.raises(ValueError, match=r"host '10.0.0.7'.*on \['10.0.0.1', '10.0.0.2'\]"):
        _worker_on(lonely, workers, "tcp://sched:8786")


def test_a_stage_error_survives_pickling_as_dask_sends_it() -> None:
    error = StageError(1, 2, "on host h1: RuntimeError: boom", "Traceback ...", peer=True)
    back = pickle.loads(pickle.dumps(error))
    assert (back.stage, back.stages, back.summary, back.child_traceback, back.peer) == (
        1, 2, "on host h1: RuntimeError: boom", "Traceback ...", True,
    )  # fmt: skip
    assert str(back) == str(error)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def dataset(labels: torch.Tensor | None = None) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 6, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    return TensorDataset(x, y if labels is None else labels, torch.rand(48, generator=g) + 0.1)


ARGS: dict[str, Any] = dict(
    optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    loss=nn.CrossEntropyLoss(reduction="none"),
    epochs=2,
    batch_size=16,
)
LOOPBACK = ["127.0.0.1", "127.0.0.2"]
"""Two addresses of this machine's loopback: two torchrun nodes, each with its address."""


class Seen(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_step_end(self, *, epoch: int, step: int, loss: float) -> None:
        self.events.append(("step", epoch, step))

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        self.events.append(("checkpoint", path, path.is_file()))


class Threads:
    """A launcher that runs every stage here, each from a thread, and raises the errors
    of all the stages that failed (once all have ended). A stage still running after
    ``timeout_s`` fails the test with what the others ended with."""

    def __init__(self, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s

    def __call__(self, stages: Any) -> list[StageOutput]:
        pool = ThreadPoolExecutor(len(stages))
        futures = [pool.submit(run_stage, stage) for stage in stages]
        done, running = wait(futures, timeout=self.timeout_s)
        pool.shutdown(wait=not running)
        ended = {s: f.exception() or "finished" for s, f in enumerate(futures) if f in done}
        assert not running, f"stages still running after {self.timeout_s} s; ended: {ended}"
        errors = [f.exception() for f in futures]
        if any(errors):
            raise ExceptionGroup("stages failed", [e for e in errors if isinstance(e, Exception)])
        return [f.result() for f in futures]


def rendezvous() -> str:
    """A rendezvous on a port of 127.0.0.1 that nothing listens on now."""
    return f"127.0.0.1:{closed_port()}"


def test_two_torchrun_nodes_train_as_plain_training_and_the_callbacks_see_it(
    tmp_path: Path,
) -> None:
    strategy = GPipeHosts(GPipe(2, 4), LOOPBACK, Threads(), rendezvous=rendezvous())
    seen = Seen()
    piped = fit(mlp(), dataset(), strategy=strategy, checkpoint_dir=tmp_path, callbacks=[seen],
                **ARGS)  # fmt: skip
    plain = fit(mlp(), dataset(), **ARGS)
    pairs = zip(piped.model.parameters(), plain.model.parameters(), strict=True)
    assert max((a - b).abs().max().item() for a, b in pairs) < 1e-5
    assert [r["epoch"] for r in piped.history] == [0, 1]
    steps = [("step", e, s) for e in (0, 1) for s in range(3)]
    checkpoints = [("checkpoint", tmp_path / f"epoch-{e:04d}.pt", True) for e in (0, 1)]
    assert seen.events == steps[:3] + checkpoints[:1] + steps[3:] + checkpoints[1:]


def test_a_failing_stage_names_its_stage_and_host_and_leaves_no_process() -> None:
    labels = dataset().tensors[1].clone()
    labels[40] = 7  # out of range for 3 classes: the last stage's loss fails in batch 3
    strategy = GPipeHosts(GPipe(2, 4), LOOPBACK, Threads(), rendezvous=rendezvous())
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # earlier tests' pools
    with pytest.raises(ExceptionGroup) as failed:
        fit(mlp(), dataset(labels), strategy=strategy, **ARGS)
    errors = {e.stage: e for e in failed.value.exceptions if isinstance(e, StageError)}
    assert "stage 1 of 2 failed: on host 127.0.0.2: IndexError" in str(errors[1])
    assert "out of bounds" in str(errors[1]) and not errors[1].peer
    # Stage 0 failed too, its connection to stage 1 closed, and says so.
    assert errors[0].peer and "on host 127.0.0.1" in str(errors[0])
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == [], [p.cmdline() for p in left]


def test_a_finished_stage_is_not_held_by_torchrun_waiting_for_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the stage process has left its output, torchrun (here a process that sleeps, as
    torchrun does at its exit barrier while another node hangs or failed) gets the grace
    and no more; before that the wait lasts as long as torchrun does."""
    monkeypatch.setattr(gpipe_hosts, "_EXIT_GRACE_S", 0.5)
    stage = HostStage(1, 2, "127.0.0.2", "127.0.0.1:29400", "run", b"")
    result = tmp_path / "result.pkl"
    result.write_bytes(b"")
    barrier = subprocess.Popen(["sleep", "120"])
    try:
        started = time.monotonic()
        assert gpipe_hosts._wait(barrier, stage, result, None, 0.05) is None
        assert time.monotonic() - started < 30 and barrier.poll() is None
    finally:
        barrier.kill()
        barrier.wait()
    exits = subprocess.Popen(["sh", "-c", "sleep 1; exit 3"])
    assert gpipe_hosts._wait(exits, stage, tmp_path / "no-result.pkl", None, 0.05) == 3


CHILD = """
import os, signal, sys, time
from mlsys.lifeline import die_with_parent
parent, out = int(sys.argv[1]), sys.argv[2]
if sys.argv[3] == "orphan":
    deadline = time.monotonic() + 120
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.05)
try:
    die_with_parent(parent, signal.SIGKILL, 1)
    open(out, "w").write("went on")
except SystemExit as exc:
    open(out, "w").write(f"exited {exc.code}")
"""


@pytest.mark.parametrize("case", ["orphan", "child"])
def test_a_stage_process_whose_parent_died_before_it_asked_to_die_with_it_exits(
    tmp_path: Path, case: str
) -> None:
    """Linux kills a stage process when its parent dies only once it has asked to be: a
    parent (torchrun, a trainer) that died before that must not leave it running."""
    import sys

    out = tmp_path / "out.txt"
    middle = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid()),"
        " sys.argv[2], sys.argv[3]])\n"
        "if sys.argv[3] == 'child':\n"
        "    child.wait()\n"
    )
    subprocess.run([sys.executable, "-c", middle, CHILD, str(out), case], check=True, timeout=300)
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out.read_text() == {"orphan": "exited 1", "child": "went on"}[case]


def test_a_stage_that_died_in_native_code_is_reported_with_its_last_words(
    tmp_path: Path,
) -> None:
    """An abort leaves no error report, and torchrun's own traceback fills the end of the
    log: the error still shows what the stage process printed as it died (the C++
    runtime's lines from the log, faulthandler's stacks from their file), and not the
    head of torchrun's traceback as if it were the stage's."""
    stage = HostStage(0, 2, "127.0.0.1", "127.0.0.1:29400", "run", b"")
    lines = [
        "some start-up line",
        "terminate called after throwing an instance of 'gloo::IoException'",
        "  what():  [gloo/transport/tcp/pair.cc:1] Connection reset by peer",
        "Traceback (most recent call last):",
        '  File "<frozen runpy>", line 198, in _run_module_as_main',
        *[f"torchrun traceback line {i}" for i in range(40)],
    ]
    (tmp_path / "torchrun.log").write_text("\n".join(lines))
    (tmp_path / "faults.log").write_text(
        "Fatal Python error: Aborted\n\nCurrent thread 0x1 (most recent call first):\n"
        '  File "/x/mlsys/training/gpipe.py", line 9 in _train_stage\n'
    )
    error = gpipe_hosts._failure(stage, tmp_path, 1)
    assert "torchrun exited with code 1 before the stage process reported" in str(error)
    words = error.child_traceback.split("torchrun's last lines:")[0]
    assert "gloo::IoException" in words and "Fatal Python error: Aborted" in words
    assert "_train_stage" in words and "some start-up line" not in words
    assert "frozen runpy" not in words
    assert "torchrun traceback line 39" in error.child_traceback


STAGE_EXIT = """
import os, sys, threading, time
from pathlib import Path
from mlsys.training import gpipe_hosts
out = Path(sys.argv[1])
# A thread that would keep an ordinary exit waiting forever.
threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
out.write_text("reported")
gpipe_hosts._leave(int(sys.argv[2]))
"""


@pytest.mark.parametrize("code", [0, 1])
def test_a_stage_process_leaves_with_its_code_once_it_has_reported(
    tmp_path: Path, code: int
) -> None:
    """The stage process ends without the interpreter's teardown (where a c10d thread
    left running aborted it after it had reported): with its own exit code, at once,
    whatever threads are still running."""
    import sys

    out = tmp_path / "out.txt"
    done = subprocess.run(
        [sys.executable, "-c", STAGE_EXIT, str(out), str(code)], timeout=120, check=False
    )
    assert done.returncode == code and out.read_text() == "reported"
