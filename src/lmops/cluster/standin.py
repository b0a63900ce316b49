"""What the two controller stand-ins share: a watch of one kind feeding a reconcile loop, a periodic
tick for the local processes they supervise, and a clean stop (SIGTERM stops every process started).

A stand-in plays a controller that cannot run on `lmops cluster` (no kubelet: its pods would never
start); it does the controller's work with local processes and writes the status the real controller
would write, so the code that reads that status is tested against the real API server.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lmops import kube

TICK_S = 0.5


class StandIn:
    """Subclasses set ``api_version``/``kind`` and implement ``changed``, ``deleted``, ``tick``, ``shutdown``."""

    api_version = ""
    kind = ""

    def __init__(self, client, *, namespace: str | None = None, work_dir: Path, log=None):
        self.client = client
        self.namespace = namespace
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.stopping = threading.Event()

    # -------------------------------------------------------- to implement
    def changed(self, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def deleted(self, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def tick(self) -> None:
        """Look at the supervised processes (exits, deadlines); called every TICK_S."""

    def shutdown(self) -> None:
        """Stop every process this stand-in started."""

    # -------------------------------------------------------- the loop
    def run(self) -> None:
        threading.Thread(target=self._watch, daemon=True, name=f"watch-{self.kind}").start()
        try:
            while not self.stopping.is_set():
                try:
                    kind, obj = self.events.get(timeout=TICK_S)
                except queue.Empty:
                    pass
                else:
                    self._handle(kind, obj)
                self._guarded("tick", self.tick)
        finally:
            self.shutdown()

    def _handle(self, kind: str, obj: dict[str, Any]) -> None:
        name = f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        if kind == "DELETED":
            self._guarded(f"{self.kind} {name} deleted", self.deleted, obj)
        else:
            self._guarded(f"{self.kind} {name}", self.changed, obj)

    def _guarded(self, what: str, fn, *args) -> None:
        # one bad object must not take the stand-in down for every other one
        try:
            fn(*args)
        except kube.KubeError as e:
            self.log(f"{what}: {e}")
        except Exception as e:  # noqa: BLE001 - logged with its type; the loop goes on
            self.log(f"{what}: {type(e).__name__}: {e}")

    def _watch(self) -> None:
        while not self.stopping.is_set():
            try:
                for event in kube.Watch(self.api_version, self.kind, self.namespace, client=self.client):
                    self.events.put(event)
                    if self.stopping.is_set():
                        return
            except kube.KubeError as e:  # the API server restarting, or gone for good (down stops us)
                self.log(f"watch of {self.kind}: {e}; retrying in 1s")
                time.sleep(1)
            except Exception as e:  # noqa: BLE001 - this thread is the stand-in's only eyes: it must not die
                self.log(f"watch of {self.kind}: {type(e).__name__}: {e}; retrying in 1s")
                time.sleep(1)

    def container_env(self, container: dict[str, Any], namespace: str,
                      mounts: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a container of this spec would get, on top of this process' own: the Secrets
        its ``envFrom`` names (read from the API server, as the kubelet does), then its ``env`` (with paths
        under its volume mounts moved to ``mounts``' local folders); ``python`` on PATH is this environment's.
        LookupError names a missing Secret."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for source in container.get("envFrom") or []:
            ref = (source.get("secretRef") or {}).get("name")
            if not ref:
                continue
            secret = kube.get("v1", "Secret", ref, namespace, client=self.client)
            if secret is None:
                raise LookupError(f'secret "{ref}" not found in namespace {namespace}')
            env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
        env.update({e["name"]: relocate(e.get("value", ""), mounts or {}) for e in container.get("env") or []
                    if "name" in e})
        return env

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        meta = obj["metadata"]
        kube.patch_status(self.api_version, self.kind, meta["name"], meta.get("namespace"), status, client=self.client)


def now() -> str:
    """A Kubernetes timestamp (RFC 3339, seconds, UTC)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(cls, argv: list[str] | None = None) -> int:
    """``python -m lmops.cluster.<stand-in> --kubeconfig K``: run until SIGTERM / Ctrl-C."""
    p = argparse.ArgumentParser(prog=f"python -m {cls.__module__}", description=(cls.__doc__ or "").splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", help="watch one namespace (default: all)")
    p.add_argument("--work-dir", help="logs and scratch (default: <kubeconfig folder>/standins/<kind>)")
    args = p.parse_args(argv)
    work = Path(args.work_dir or Path(args.kubeconfig).resolve().parent / "standins" / cls.kind.lower())
    standin = cls(kube.api_client(args.kubeconfig), namespace=args.namespace, work_dir=work)

    def stop(signum, frame):
        standin.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    standin.log(f"{cls.__name__}: watching {cls.kind} in {args.namespace or 'all namespaces'}; work dir {work}")
    standin.run()
    return 0


def local_mounts(container: dict[str, Any], root: Path) -> dict[str, str]:
    """A fresh local folder under ``root`` for each volume the container mounts, by mount path: what the
    kubelet gives a pod's emptyDirs (lmops' pods write only there: their root filesystem is read-only)."""
    out = {}
    for m in container.get("volumeMounts") or []:
        folder = root / m["name"]
        folder.mkdir(parents=True, exist_ok=True)
        out[m["mountPath"]] = str(folder)
    return out


def relocate(value: str, mounts: dict[str, str]) -> str:
    """``value`` with a leading mount path (the longest that matches) replaced by its local folder."""
    for path in sorted(mounts, key=len, reverse=True):
        if value == path or value.startswith(path.rstrip("/") + "/"):
            return mounts[path] + value[len(path.rstrip("/")):]
    return value
