"""The processes of `lmops cluster` (control plane and node): each in its own process group, recorded
(``processes/<name>.json``, the same records ``lmops stop`` keeps for the local servers) the moment it is
spawned, so ``down`` -- or an ``up`` interrupted half-way -- stops exactly what was started."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lmops.errors import LmopsError
from lmops.pipeline import servers


class ClusterError(LmopsError):
    """The cluster could not start, or is not there; the message says which part and why."""


def procs(folder: Path) -> Path:
    return folder / "processes"


def log_path(folder: Path, name: str) -> Path:
    return folder / "logs" / f"{name}.log"


def spawn(folder: Path, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    log = log_path(folder, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    servers.write_record(name, {"kind": name, "pid": proc.pid, "pgid": proc.pid, "log": str(log), "cmd": cmd},
                         procs(folder))
    return proc


def wait(folder: Path, name: str, ready: Callable[[], bool], deadline: float) -> None:
    while not ready():
        if servers.read_record(name, procs(folder)) is None:
            raise ClusterError(f"{name} exited during start-up; {log_hint(folder, name)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{name} not ready in time; {log_hint(folder, name)}")
        time.sleep(0.2)


def log_hint(folder: Path, name: str) -> str:
    log = log_path(folder, name)
    try:
        lines = log.read_text(errors="replace").splitlines()[-12:]
    except OSError:
        lines = []
    text = "\n".join(lines)
    if "address already in use" in text:
        return f"a port it needs is in use (see {log}); run `lmops cluster up` again to pick free ports"
    return f"last lines of {log}:\n{text}"


def http_ok(url: str, token: str | None = None, ca_file: str | None = None) -> bool:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify: bool | str = ca_file if ca_file and Path(ca_file).is_file() else False
    try:
        with _quiet_insecure():
            return requests.get(url, headers=headers, verify=verify, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def _quiet_insecure() -> Iterator[None]:
    # before the serving certificate exists the readiness probe cannot verify it (it only asks "up?")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
