"""Several hosts on this machine: Linux network namespaces joined by a switch.

Each host is a network namespace with one interface, ``eth0``, at its own address in a
private range; a veth pair joins it to a bridge in a switch namespace of its own, so the
hosts reach each other and nothing else: not this machine's loopback, not its other
interfaces, and this machine's network is not touched. A process started on a host
(:meth:`Hosts.popen`) sees only that host's network; the file system is shared, as a
shared checkout would be.

A test that serves the hosts from this machine (an S3 store, a tracking server) asks for
:meth:`Hosts.join_this_machine`: one more veth pair, from this machine's own namespace to
the bridge, at ``10.213.0.254``. Services bound to that address alone are reached by the
hosts and by this machine, and by nothing else; the interface (and with it its address
and route) is removed on exit.

Needs root and iproute2's ``ip``; :func:`unavailable` says why not where they are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from typing import Any

SUBNET = "10.213.0"
"""The hosts' addresses: ``10.213.0.1``, ``10.213.0.2``, ... (/24), used only inside the
namespaces."""
THIS_MACHINE = f"{SUBNET}.254"
"""This machine's address on the hosts' switch, once :meth:`Hosts.join_this_machine`."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why hosts cannot be made here (not root, no ``ip``), or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (make install adds it with apt-get)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"mlsys-probe-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"network namespaces are not allowed here: {exc}"
    _ip("netns", "del", probe)
    return None


class Hosts:
    """``count`` hosts joined by a switch; a context manager that removes them, and every
    process still running on them, on exit.

    Usage::

        with Hosts(2) as hosts:
            server = hosts.popen(0, ["python", "-m", "http.server", "--bind", hosts.address(0)])
            hosts.popen(1, ["curl", f"http://{hosts.address(0)}:8000/"]).wait()
    """

    def __init__(self, count: int) -> None:
        if not 1 <= count <= 200:
            raise ValueError(f"count must be between 1 and 200, got {count}")
        self.count = count
        self.prefix = f"mlsys-{uuid.uuid4().hex[:8]}"
        self.switch = f"{self.prefix}-sw"
        self.names = [f"{self.prefix}-h{i}" for i in range(count)]
        self._made: list[str] = []
        self._links: list[str] = []

    def address(self, host: int) -> str:
        """The address of host ``host`` (0-based)."""
        return f"{SUBNET}.{host + 1}"

    def __enter__(self) -> Hosts:
        try:
            self._add(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, name in enumerate(self.names):
                self._add(name)
                port = f"h{i}"
                _ip("link", "add", "eth0", "netns", name, "type", "veth",
                    "peer", "name", port, "netns", self.switch)  # fmt: skip
                _ip("-n", self.switch, "link", "set", port, "master", "br0")
                _ip("-n", self.switch, "link", "set", port, "up")
                _ip("-n", name, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _ip("-n", name, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def join_this_machine(self) -> str:
        """Join this machine's own network namespace to the switch with an interface of
        its own at :data:`THIS_MACHINE` (/24); that address. Removed by :meth:`close`."""
        link = self.prefix  # "mlsys-" + 8 hex digits: a free name within 15 characters
        _ip("link", "add", link, "type", "veth", "peer", "name", "root", "netns", self.switch)
        self._links.append(link)
        _ip("-n", self.switch, "link", "set", "root", "master", "br0")
        _ip("-n", self.switch, "link", "set", "root", "up")
        _ip("addr", "add", f"{THIS_MACHINE}/24", "dev", link)
        _ip("link", "set", link, "up")
        return THIS_MACHINE

    def command(self, host: int, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on host ``host``."""
        return ["ip", "netns", "exec", self.names[host], *argv]

    def popen(self, host: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on host ``host`` (``kwargs`` as for :class:`subprocess.Popen`)."""
        return subprocess.Popen(self.command(host, argv), **kwargs)

    def close(self) -> None:
        """Kill what still runs on the hosts, then remove them, the switch and this
        machine's interface on it."""
        for link in self._links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        self._links.clear()
        for name in reversed(self._made):
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=30
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self._made.clear()
