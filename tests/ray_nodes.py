"""A real Ray cluster of `ray start` nodes on loopback, started and stopped by a test.

Each node is one `ray start --block` process in a process group of its own, so stopping the cluster
stops exactly its processes (`ray stop` would stop every Ray process on the machine, other tests'
clusters included). Every port a node opens is a free one chosen here (two nodes on one machine, and
other tests' clusters, must not collide), all on 127.0.0.1, and `RAY_TMPDIR` is a short folder the
test owns (Ray's unix socket paths must stay under ~107 characters).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

STARTED = "Ray runtime started"  # what `ray start` prints once the node is up
OBJECT_STORE_BYTES = 256 * 2**20  # per node (Ray's default is 30% of the machine's memory)


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayNodes:
    """The nodes of one cluster, head first; `address` is what a driver passes to `ray.init`."""

    temp_dir: Path
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(self.temp_dir)}

    def start(self, *, cpus: int, resources: dict[str, float], timeout_s: float = 120.0) -> None:
        """Start one node (the head if it is the first) and return once it says it runs."""
        ray = str(Path(sys.executable).with_name("ray"))
        if self.processes:
            where = ["--address", self.address]
        else:  # the head's dashboard process starts even when turned off: give it a free port too
            where = ["--head", "--port", str(self.port), "--include-dashboard", "false"]
            where += ["--dashboard-port", str(free_port())]
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        command = [
            ray,
            "start",
            *where,
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(cpus),
            "--resources",
            json.dumps(resources),
            "--temp-dir",
            str(self.temp_dir),
            "--object-store-memory",
            str(OBJECT_STORE_BYTES),
            "--disable-usage-stats",
            "--block",
            *[str(x) for pair in ports.items() for x in pair],
        ]
        process = subprocess.Popen(
            command, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.processes.append(process)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(process, lines), daemon=True).start()  # a full pipe blocks a node
        output: list[str] = []
        deadline = time.monotonic() + timeout_s
        while STARTED not in "".join(output):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"ray start did not come up in {timeout_s:g} s:\n{''.join(output)}") from None
            if line is None:
                raise RuntimeError(f"ray start exited with {process.wait()}:\n{''.join(output)}")
            output.append(line)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop every node's process group: SIGTERM (`ray start --block` then stops its node), SIGKILL
        for what is still there after `grace_s`."""
        for process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in reversed(self.processes):
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)  # whatever of the group outlived its `ray start`
            process.wait()
        self.processes = []

    def leftovers(self, groups: list[int], wait_s: float = 10.0) -> list[int]:
        """Processes still running in the process groups `groups` (the nodes' pids, taken before `stop`),
        after waiting up to `wait_s` for killed ones to go (a zombie, killed and not yet reaped, is gone)."""
        deadline = time.monotonic() + wait_s
        while True:
            found = [pid for pid, group, state in _processes() if group in groups and state != "Z"]
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def _processes() -> list[tuple[int, int, str]]:
    """(pid, process group, state) of every process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        found.append((int(entry.name), int(fields[2]), fields[0]))
    return found


def _read_lines(process: subprocess.Popen, lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
