"""A server of this machine on 127.0.0.1 made reachable from pods: a TCP relay (socat) on the node's address,
same port, as the node does for the API server.

Local servers (a tests' or `make demo`'s MLflow, moto S3) listen on 127.0.0.1 only; pods cannot reach that.
With the relay, ``http://10.244.0.1:PORT`` reaches the server from pods and from this machine alike, so one
URL can go into what lmops renders (e.g. the predictor's MLFLOW_TRACKING_URI). Only the node's bridge
address listens: nothing outside this machine can connect.
"""

from __future__ import annotations

import subprocess
import time
from urllib.parse import urlsplit, urlunsplit

from lmops.cluster.node_network import NODE_IP
from lmops.cluster.supervise import ClusterError
from lmops.processes import port_answers


def start(url: str, timeout_s: float = 10) -> tuple[subprocess.Popen, str]:
    """Relay ``url``'s port on the node's address to 127.0.0.1; returns (the relay process, the URL pods use).
    Stop it with ``stop``."""
    parts = urlsplit(url)
    port = parts.port
    proc = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind={NODE_IP},fork,reuseaddr", f"TCP:127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not port_answers(NODE_IP, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise ClusterError(f"no relay for {url} on {NODE_IP}:{port} (is the node up? `lmops cluster up`): "
                               f"{(proc.stderr.read() or b'').decode(errors='replace').strip()[-300:]}")
        time.sleep(0.1)
    return proc, urlunsplit(parts._replace(netloc=f"{NODE_IP}:{port}"))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
