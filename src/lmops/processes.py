"""Stopping a local server's whole process group, and checking that nothing of it survived.

Local servers (mlflow, the KServe model server, a local Ray runtime) run in their own session, because they
spawn helpers (uvicorn workers, job consumers, Ray workers) that outlive a killed parent; stopping one means
signalling the group -- and the rest of its session: Ray's raylet starts each worker in a process group of its
own (same session), and such a worker lingers for a while after its raylet is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path


def stop_group(pgid: int, grace: float = 10, reap: Callable[[], bool] | None = None) -> None:
    """SIGTERM the group, SIGKILL what is left after ``grace``; raises if anything survives.

    ``reap``: collects the leader when it is our child, True once it is collected (else it would stay a
    zombie, and a caller checking the pid would still find it).
    """
    def gone() -> bool:
        collected = reap() if reap is not None else True
        return collected and not session_alive(pgid)

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass  # the group is gone; members of its session in groups of their own may not be
        strays = _strays(pgid)
        for pid in strays:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not strays and not session_alive(pgid):
            break
        deadline = time.time() + wait
        while time.time() < deadline and not gone():
            time.sleep(0.1)
    if reap is not None:
        deadline = time.time() + 5  # the leader may still be on its way to becoming a zombie
        while not reap() and time.time() < deadline:
            time.sleep(0.05)
    if session_alive(pgid):
        raise RuntimeError(f"processes of group {pgid} survived SIGKILL")


def group_alive(pgid: int) -> bool:
    """True while any process (zombies excluded) is still in the group: the server it leads runs."""
    return any(group == pgid for group in _members(pgid).values())


def session_alive(pgid: int) -> bool:
    """True while any process (zombies excluded) is still in the group or in the session it leads -- more
    than the server: containerd's shims, for one, live on in its session by design."""
    return bool(_members(pgid))


def _members(pgid: int) -> dict[int, int]:
    """Live processes (zombies excluded) in group ``pgid`` or in the session ``pgid`` leads: pid -> their pgid."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pgid in (int(fields[2]), int(fields[3])) and fields[0] != "Z":  # fields: state ppid pgrp session
            out[int(stat.parent.name)] = int(fields[2])
    return out


def _strays(pgid: int) -> list[int]:
    """Members of the session ``pgid`` leads that sit in process groups of their own (Ray's workers)."""
    return [pid for pid, group in _members(pgid).items() if group != pgid]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first, then theirs), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def stop_tree(pids: list[int], grace: float = 10) -> list[int]:
    """SIGINT (a chance to clean up, as Ctrl-C gives), then SIGTERM, then SIGKILL; returns what survived."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5), (signal.SIGKILL, 3)):
        still = [p for p in pids if alive(p)]
        for p in still:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and any(alive(p) for p in still):
            time.sleep(0.1)
    return [p for p in pids if alive(p)]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_answers(host: str, port: int, timeout_s: float = 1) -> bool:
    """Something accepts TCP connections on ``host:port`` (a server started in the background is up)."""
    with socket.socket() as s:
        s.settimeout(timeout_s)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it), for a local server to listen on."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
