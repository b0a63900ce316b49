"""A local Ray runtime that outlives one stage: ``ray start --head --block`` in its own process group.

Starting Ray costs seconds to tens of seconds on a small machine; the train and compress stages of one
``make run`` (and the next run) connect to this one through ``RAY_ADDRESS`` instead of each starting
their own. ``--block`` keeps ``ray start`` in the foreground as the group's leader, so the runtime is
stopped by signalling that group (``lmops.processes.stop_group``), never by ``ray stop``, which would
stop every Ray on the machine. The head binds 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lmops.errors import LmopsError
from lmops.processes import free_port, port_answers, stop_group

READY_LINE = "Ray runtime started"


class RayHeadError(LmopsError, RuntimeError):
    """The local Ray runtime did not start; the message holds the end of its log."""


LOCAL_RAY_ENV = "LMOPS_RAY_LOCAL"
"""Set to 1 beside RAY_ADDRESS when that runtime is a local one: its resources are fixed, so a request it
cannot place fails now instead of waiting for an autoscaler that does not exist."""


def start_ray_head(log_path: Path, *, num_cpus: int | None = None, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start a head node; returns (the ``ray start`` process, its GCS address ``127.0.0.1:PORT``)."""
    exe = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if not exe:
        raise RayHeadError("ray is not installed in this environment")
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [exe, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={num_cpus or os.cpu_count()}", "--include-dashboard=false", "--disable-usage-stats"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")})
    address = f"127.0.0.1:{port}"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RayHeadError(f"`ray start --head` exited with {proc.returncode}: {_tail(log_path)}")
            if READY_LINE in log_path.read_text(errors="replace") and gcs_answers(address):
                return proc, address
            time.sleep(0.3)
        raise RayHeadError(f"Ray head not ready after {timeout:.0f}s: {_tail(log_path)}")
    except BaseException:  # Ctrl-C or a failed start: leave nothing running
        stop_group(proc.pid, reap=lambda: proc.poll() is not None)
        raise


def gcs_answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    return port_answers(host, int(port), timeout_s=2)


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
