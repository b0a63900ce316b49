"""Ctrl-C during a local pipeline run leaves no process behind: the task, the Ray it started, its workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lmops.processes import descendants

pytestmark = pytest.mark.slow


def test_ctrl_c_while_training_leaves_no_orphans(tmp_path, mlflow_server):
    env = {**os.environ, "LMOPS_STATE_DIR": str(tmp_path / "state"), "RAY_AUTH_MODE": "disabled",
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    log = open(tmp_path / "run.log", "w")
    # a new session, like a terminal's foreground job; Ctrl-C is SIGINT to its whole process group
    proc = subprocess.Popen([sys.executable, "-m", "lmops.cli", "pipeline", "run", "--set", "train.max_steps=5000",
                             "--set", f"cache_dir={tmp_path / 'cache'}", "--set", f"workdir={tmp_path / 'runs'}",
                             "--set", f"registry.tracking_uri={mlflow_server}", "--set", "serve.port=0"],
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
    time.sleep(1)
    alive = [p for p in seen if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split(") ")[1][0] != "Z"]
    detail = {p: open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:200] for p in alive if os.path.exists(f"/proc/{p}")}
    assert not alive, detail
