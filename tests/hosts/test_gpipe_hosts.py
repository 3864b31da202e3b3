"""GPipe across hosts: torchrun on two hosts (network namespaces, see
:mod:`tests.hosts.netns`), one pipeline stage each, meeting through torchrun's c10d
rendezvous on the first host; the trained parameters equal plain training's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts.netns import Hosts, unavailable

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpipe_torchrun.py"
RENDEZVOUS_PORT = 29400

why_not = unavailable()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")


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
