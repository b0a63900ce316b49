"""The engine's Docker-compatible API for the length of a run: docker's own socket, or a
``podman system service`` lmops starts (with its containers.conf) and stops again, also on failure.

Containers started through the API outlive the service (podman runs them under conmon): the model server
the deploy task starts keeps serving after the run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lmops.images.engine import Engine, EngineError

START_TIMEOUT_S = 30


@contextlib.contextmanager
def engine_api(engine: Engine) -> Iterator[str]:
    """Yields the API's URL (``unix:///...``) to hand to the docker SDK as DOCKER_HOST."""
    if engine.name == "docker":
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    folder = Path(tempfile.mkdtemp(prefix="lmops-podman-"))  # short: a unix socket path has 108 bytes
    sock, log_path = folder / "podman.sock", folder / "service.log"
    url = f"unix://{sock}"
    with open(log_path, "wb") as log:
        # --time=0: no idle timeout (a long task streams no API calls for minutes); we stop it ourselves
        proc = subprocess.Popen([engine.exe, "system", "service", "--time=0", url], env=engine.environ(),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        _wait(proc, url, log_path)
        yield url
    finally:
        from lmops.processes import stop_group

        with contextlib.suppress(ProcessLookupError, RuntimeError):
            stop_group(proc.pid, grace=10, reap=lambda: proc.poll() is not None)
        sock.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def _wait(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    import docker

    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise EngineError(f"podman system service exited ({proc.returncode}) before answering: "
                              f"{log_path.read_text(errors='replace').strip()[-800:]}")
        if Path(url.removeprefix("unix://")).exists():
            try:
                client = docker.DockerClient(base_url=url, timeout=5)
                try:
                    client.ping()
                    return
                finally:
                    client.close()
            except docker.errors.DockerException:
                pass
        time.sleep(0.2)
    raise EngineError(f"podman system service did not answer on {url} within {START_TIMEOUT_S}s: "
                      f"{log_path.read_text(errors='replace').strip()[-800:]}")
