"""Ctrl-C during a local pipeline run leaves no process behind but the recorded local Ray runtime, which
has no job left on it and which `lmops stop` then stops: the task, its Ray job's workers are gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from child_exec import as_in_a_terminal
from lmops.processes import descendants

pytestmark = pytest.mark.slow


@pytest.fixture
def stop_after(tmp_path):
    """`lmops stop` for the run's state folder when the test ends, passed or failed: a run that failed before
    its Ctrl-C would otherwise leave its recorded Ray runtime (its own process group) behind."""
    yield
    env = {**os.environ, "LMOPS_STATE_DIR": str(tmp_path / "state")}
    subprocess.run([sys.executable, "-m", "lmops.cli", "stop"], env=env, cwd=tmp_path, capture_output=True, timeout=60)


def test_ctrl_c_while_training_leaves_no_orphans(tmp_path, mlflow_server, stop_after):
    env = {**os.environ, "LMOPS_STATE_DIR": str(tmp_path / "state"), "RAY_AUTH_MODE": "disabled",
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    log = open(tmp_path / "run.log", "w")
    # a new session, like a terminal's foreground job; Ctrl-C is SIGINT to its whole process group
    proc = subprocess.Popen(as_in_a_terminal([sys.executable, "-m", "lmops.cli", "pipeline", "run", "--config", "micro",
                                              "--set", "train.max_steps=5000", "--set", f"cache_dir={tmp_path / 'cache'}",
                                              "--set", f"workdir={tmp_path / 'runs'}",
                                              "--set", f"registry.tracking_uri={mlflow_server}", "--set", "serve.port=0"]),
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    seen: set[int] = set()
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # until a training worker reports steps: Ray and its workers are up
            seen.update(descendants(proc.pid))
            if "step 10/5000" in (tmp_path / "run.log").read_text():
                break
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("training never started: " + (tmp_path / "run.log").read_text()[-3000:])
        seen.update(descendants(proc.pid))
        assert len(seen) >= 3, seen  # the task, Ray's processes, a worker
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert code != 0
    # the run's Ray runtime is a recorded local server, kept for the next run like MLflow
    ray_group = json.loads((tmp_path / "state" / "servers" / "ray.json").read_text())["pgid"]
    deadline = time.time() + 30  # the raylet stops a dead driver's workers within seconds
    while time.time() < deadline and _jobs_workers(_alive(seen)):
        time.sleep(0.5)
    left = _alive(seen)
    assert not _jobs_workers(left), _commands(left)
    assert all(os.getpgid(p) == ray_group for p in left if _exists(p)), _commands(left)
    stop = subprocess.run([sys.executable, "-m", "lmops.cli", "stop"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert "ray" in stop.stdout, stop.stdout + stop.stderr
    time.sleep(1)
    assert not _alive(seen), _commands(_alive(seen))


def _exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _alive(pids: set[int]) -> list[int]:
    return [p for p in pids if _exists(p) and open(f"/proc/{p}/stat").read().split(") ")[1][0] != "Z"]


def _commands(pids: list[int]) -> dict[int, str]:
    return {p: open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:200] for p in pids if _exists(p)}


def _jobs_workers(pids: list[int]) -> list[int]:
    """The training job's Ray actors (Ray names an actor's process `ray::<class>`; the head's own agents and
    idle pooled workers are not the job's)."""
    return [p for p, cmd in _commands(pids).items() if cmd.startswith("ray::") and "Train" in cmd]
