"""A local ``mlflow server`` in its own process group: for tests, benchmarks and ``make run``.

The server spawns helper processes (uvicorn workers, job consumers) that outlive a killed parent, so it
runs in a new session and is stopped by signalling the whole group; ``stop_process_group`` fails loudly
if anything survives. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false keeps the job consumers from starting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lmops.processes import free_port, stop_group


# For local servers whose registry webhooks go to a receiver on this machine (tests, bench, make demo):
# http and loopback targets allowed, the per-event webhook list cached 1 s instead of 60 (a new webhook would
# otherwise be skipped for a minute), and a fixed key for the secrets MLflow stores encrypted -- these are
# throwaway servers; a real one gets its own MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY.
LOCAL_WEBHOOK_ENV = {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                     "MLFLOW_WEBHOOK_CACHE_TTL": "1",
                     "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "bG1vcHMtdGVzdHMtb25seS1mZXJuZXQta2V5LTAwMDE="}


def start_mlflow_server(root: Path, artifacts: str, env: dict[str, str] | None = None,
                        timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """A real ``mlflow server`` (sqlite backend, 127.0.0.1) in its own process group; (process, URL).

    The server spawns helper processes that outlive a killed parent, hence the process group, and
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false so it does not start the job consumers at all.
    """
    import requests

    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    if not exe:
        raise RuntimeError("mlflow is not installed in this environment")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [exe, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})
    log.close()  # the child holds its own copy of the descriptor
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}: "
                               f"{(root / 'server.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_process_group(proc)
    raise TimeoutError(f"mlflow server on {url} not healthy after {timeout}s: {(root / 'server.log').read_text()[-2000:]}")


def stop_process_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the whole group, SIGKILL what is left after ``grace``; fails if anything survives."""
    def reap() -> bool:
        try:
            proc.wait(0.1)
            return True
        except subprocess.TimeoutExpired:
            return False

    stop_group(proc.pid, grace, reap)  # start_new_session=True: the leader's pid is the group id
