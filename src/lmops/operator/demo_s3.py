"""`make demo`'s S3: the staging store of its training job's pods, on one machine.

An LMTrainingJob's stage pods pass their outputs through S3 (executor ``kubernetes``). On a cluster that is your S3
or MinIO; the demo, which has neither, runs ``moto_server`` (an S3-compatible server from the lock's ``moto``) on
127.0.0.1 with throwaway credentials, and the pods reach it through the node's relay (lmops.cluster.pod_relay).
The job's local sources are uploaded there first, since a pod cannot read this machine's files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lmops import storage
from lmops.errors import LmopsError
from lmops.processes import free_port, port_answers

BUCKET = "lmops-demo"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo"}  # a local throwaway store's
REGION = "us-east-1"


def start(log_path: Path, timeout_s: float = 30) -> tuple[subprocess.Popen, str]:
    """moto_server on 127.0.0.1 with the demo's bucket; this process's S3 settings point at it. Returns (the
    server process, its URL)."""
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if not exe:
        raise LmopsError("moto_server not found: `make demo` installs the lock (moto[server]) into .venv")
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not port_answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise LmopsError(f"moto_server did not listen on 127.0.0.1:{port} (log {log_path})")
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    os.environ.update({"LMOPS_S3_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": REGION, **CREDENTIALS})
    storage.s3_client().create_bucket(Bucket=BUCKET)
    return proc, url


def upload_sources(sources: list[str], prefix: str) -> list[str]:
    """The job's sources as its pods read them: local files and folders uploaded under ``prefix``, s3:// kept; a
    path that does not exist is kept as it is, for the build pod to name it (the job fails, saying so)."""
    out = []
    for i, source in enumerate(sources):
        path = Path(source)
        if storage.is_s3(source) or not path.exists():
            out.append(source)
        elif path.is_dir():
            storage.upload_dir(path, f"{prefix}/{i}")
            out.append(f"{prefix}/{i}/")
        else:
            storage.write_bytes(f"{prefix}/{i}/{path.name}", path.read_bytes())
            out.append(f"{prefix}/{i}/{path.name}")
    return out
