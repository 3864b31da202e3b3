"""GPipe across hosts: torchrun on two hosts (network namespaces, see
:mod:`tests.hosts.netns`), one pipeline stage each, meeting through torchrun's c10d
rendezvous on the first host; the trained parameters equal plain training's.

Then the same through the train task's entry point: a Dask scheduler and a worker on each
of the two hosts, the gpipe trainer with ``hosts``, and
:func:`tasks.gpipe_hosts.hosts_strategy` (what ``fit_model`` calls when the trainer has
hosts) handed to ``fit`` as the task does; each stage reports the address it ran from. A
stage that fails, and a worker killed mid-run, fail the run naming the stage and its host,
and leave only the scheduler and the live workers on the hosts. The
flow around it (S3, MLflow, Prefect) is the one tested on one machine; this test is about
the stages' placement and the parameters."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlsys.training import Callback, StageError, fit
from mlsys.training.trainers import GPipeTrainer
from tests.hosts.netns import Hosts, unavailable
from tests.unit.test_gpipe_hosts import dataset, mlp

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpipe_torchrun.py"
RENDEZVOUS_PORT = 29400

DASK = str(Path(sys.executable).with_name("dask"))
SCHEDULER_PORT = 8786

why_not = unavailable()
pytestmark = [
    pytest.mark.skipif(why_not is not None, reason=why_not or ""),
    pytest.mark.timeout(1800),
]


def torchrun(hosts: Hosts, host: int, folder: Path) -> list[str]:
    """torchrun on ``host``: one process (one stage) of two nodes, rendezvous on host 0."""
    return hosts.command(
        host,
        [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes=2", "--nproc-per-node=1",
            "--rdzv-backend=c10d", "--rdzv-id=gpipe-hosts",
            f"--rdzv-endpoint={hosts.address(0)}:{RENDEZVOUS_PORT}",
            # Which node serves the rendezvous store: torchrun's guess compares host
            # names, which the namespaces share.
            f"--rdzv-conf=is_host={int(host == 0)},join_timeout=120",
            f"--local-addr={hosts.address(host)}",
            str(SCRIPT), str(folder),
        ],
    )  # fmt: skip


def test_two_hosts_train_one_stage_each_and_equal_plain_training(tmp_path: Path) -> None:
    with Hosts(2) as hosts:
        runs = []
        for host in range(2):
            env = {
                **os.environ,
                "MLSYS_TEST_HOST": hosts.address(host),
                "GLOO_SOCKET_IFNAME": "eth0",  # the host's interface, not its loopback
            }
            runs.append(
                subprocess.Popen(
                    torchrun(hosts, host, tmp_path),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outputs = [run.communicate(timeout=300)[0] for run in runs]
        for host, (run, output) in enumerate(zip(runs, outputs, strict=True)):
            assert run.returncode == 0, f"host {host}:\n{output[-3000:]}"

    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert sorted(r["host"] for r in ranks) == ["10.213.0.1", "10.213.0.2"]
    assert all(r["diff"] < 1e-5 and r["epochs"] == 2 for r in ranks), ranks
    assert [r["steps_seen"] for r in ranks] == [0, 6]  # callbacks run on the last rank


def test_a_host_reaches_the_other_but_not_this_machine() -> None:
    """The hosts are hosts: what crosses between them crosses the veth pair."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
        "    print('open')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )
    listen = (
        "import socket, sys\n"
        "s = socket.socket(); s.bind((sys.argv[1], 4555)); s.listen(); print('ready', flush=True)\n"
        "s.accept()[0].close()\n"
    )
    with Hosts(2) as hosts:
        server = hosts.popen(
            1, [sys.executable, "-c", listen, hosts.address(1)], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        reach = subprocess.run(
            hosts.command(0, [sys.executable, "-c", probe, hosts.address(1), "4555"]),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert reach.stdout.strip() == "open", reach.stderr
        server.wait(timeout=30)
        # This machine's loopback is another host's loopback: nothing listens there.
        local = subprocess.run(
            hosts.command(0, [sys.executable, "-c", probe, "127.0.0.1", "5432"]),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert local.stdout.strip() == "ConnectionRefusedError", local.stdout


@dataclass
class Cluster:
    hosts: Hosts
    address: str
    daemons: list[int]
    """The scheduler's and the workers' process ids: all that runs on the hosts between
    training runs."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Hosts 0 and 1 with a Dask worker each (one thread, no nanny) and the scheduler on
    host 0, over plain TCP; this machine on their switch as the flow's host. The workers
    start with no GLOO_SOCKET_IFNAME: the stages find their host's interface themselves."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("gpipe-dask-hosts")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder)}
    with Hosts(2) as hosts:
        hosts.join_this_machine()
        address = f"tcp://{hosts.address(0)}:{SCHEDULER_PORT}"
        daemons = []
        with (folder / "scheduler.log").open("w") as log:
            daemons.append(
                hosts.popen(
                    0,
                    [DASK, "scheduler", "--host", hosts.address(0), "--port",
                     str(SCHEDULER_PORT), "--no-dashboard"],
                    env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                ).pid
            )  # fmt: skip
        for host in (0, 1):
            with (folder / f"worker-{host}.log").open("w") as log:
                daemons.append(
                    hosts.popen(
                        host,
                        [DASK, "worker", address, "--host", hosts.address(host),
                         "--nthreads", "1", "--no-nanny", "--no-dashboard",
                         "--name", f"worker-{host}", "--local-directory",
                         str(folder / f"worker-{host}")],
                        env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                    ).pid
                )  # fmt: skip
        with Client(address, timeout="120s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=600)
        yield Cluster(hosts, address, daemons)


class Seen(Callback):
    def __init__(self) -> None:
        self.steps = 0
        self.checkpoints: list[Path] = []

    def on_step_end(self, *, epoch: int, step: int, loss: float) -> None:
        self.steps += 1

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        self.checkpoints.append(path)


def train_on_hosts(cluster: Cluster, data: TensorDataset, folder: Path, **kwargs: Any) -> Any:
    """fit as the train task runs it with a gpipe trainer that has hosts; the strategy."""
    from tasks.gpipe_hosts import hosts_strategy

    hosts = [cluster.hosts.address(0), cluster.hosts.address(1)]
    trainer = GPipeTrainer(stages=2, microbatches=4, hosts=hosts)
    strategy = hosts_strategy(trainer, folder, cluster.address)
    return strategy, fit(mlp(), data, strategy=strategy, checkpoint_dir=folder, **kwargs)


ARGS: dict[str, Any] = dict(
    optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    loss=nn.CrossEntropyLoss(reduction="none"),
    epochs=2,
    batch_size=16,
    drop_last=True,
)


def test_the_train_task_runs_each_stage_on_its_host_through_dask_and_equals_plain_training(
    cluster: Cluster, tmp_path: Path
) -> None:
    seen = Seen()
    strategy, piped = train_on_hosts(cluster, dataset(), tmp_path, callbacks=[seen], **ARGS)
    plain = fit(mlp(), dataset(), **ARGS)

    pairs = zip(piped.model.parameters(), plain.model.parameters(), strict=True)
    assert max((a - b).abs().max().item() for a, b in pairs) < 1e-5
    assert len(piped.history) == 2
    placed = strategy.launch.placements
    assert [(p.stage, p.host, p.address) for p in placed] == [
        (0, "10.213.0.1", "10.213.0.1"),
        (1, "10.213.0.2", "10.213.0.2"),
    ]
    assert [p.worker.rsplit(":", 1)[0] for p in placed] == ["tcp://10.213.0.1", "tcp://10.213.0.2"]
    # The callbacks here saw every step, and each epoch's checkpoint, written here.
    assert seen.steps == 6
    assert seen.checkpoints == [tmp_path / "epoch-0000.pt", tmp_path / "epoch-0001.pt"]
    assert all(path.is_file() for path in seen.checkpoints)


def on_hosts(cluster: Cluster) -> set[int]:
    """The processes running on the hosts."""
    return {
        int(pid)
        for name in cluster.hosts.names
        for pid in subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=30
        ).stdout.split()
    }


def described(pids: set[int]) -> dict[int, str]:
    """What each process is (its parent and command line), for a failure's message."""
    import psutil

    seen = {}
    for pid in sorted(pids):
        try:
            process = psutil.Process(pid)
            seen[pid] = f"parent {process.ppid()}: {' '.join(process.cmdline())[:300]}"
        except psutil.Error as exc:
            seen[pid] = type(exc).__name__
    return seen


def test_a_failing_stage_fails_the_run_naming_its_stage_and_host_and_leaves_no_process(
    cluster: Cluster, tmp_path: Path
) -> None:
    labels = dataset().tensors[1].clone()
    labels[40] = 7  # out of range for 3 classes: the last stage's loss fails in batch 3
    with pytest.raises(StageError) as failed:
        train_on_hosts(cluster, dataset(labels), tmp_path, **ARGS)
    assert failed.value.stage == 1
    assert str(failed.value).startswith("GPipe stage 1 of 2 failed: on host 10.213.0.2: IndexError")
    assert "out of bounds" in str(failed.value)
    # torchrun and the stage processes go; the scheduler and the workers stay.
    deadline = time.monotonic() + 120
    while on_hosts(cluster) != set(cluster.daemons) and time.monotonic() < deadline:
        time.sleep(1)
    left = on_hosts(cluster)
    assert left == set(cluster.daemons), described(left - set(cluster.daemons))


def test_a_worker_lost_mid_run_fails_the_run_naming_the_stage_and_leaves_no_process(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Runs last: it kills host 1's worker (SIGKILL), and torchrun with it."""
    import signal
    import threading

    scheduler, worker_0, worker_1 = cluster.daemons
    killed: list[int] = []

    def kill_worker_1_once_its_stage_runs() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            running = on_hosts(cluster) - set(cluster.daemons)
            if len(running) >= 4:  # torchrun and a stage process on each host
                time.sleep(2)  # into training
                os.kill(worker_1, signal.SIGKILL)
                killed.append(worker_1)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_worker_1_once_its_stage_runs, daemon=True)
    killer.start()
    with pytest.raises(StageError) as failed:
        train_on_hosts(cluster, dataset(), tmp_path, **{**ARGS, "epochs": 2000})
    killer.join(timeout=60)
    assert killed == [worker_1]
    assert str(failed.value).startswith("GPipe stage 1 of 2 failed: on host 10.213.0.2: its Dask")
    assert "left the cluster" in str(failed.value)
    deadline = time.monotonic() + 120
    while on_hosts(cluster) != {scheduler, worker_0} and time.monotonic() < deadline:
        time.sleep(1)
    left = on_hosts(cluster)
    assert left == {scheduler, worker_0}, described(left - {scheduler, worker_0})
