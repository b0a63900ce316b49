"""The local executor: `lmops pipeline run --runner inprocess --until register` as a child process of the operator,
one folder per run. The run ends at register: serving is a ModelDeployment's job (and a model server of its
own would compete for the machine's ports with every other one).

``<runs_dir>/<run_id>/``: ``cmd.json`` (what ran), ``log`` (its output), ``pid``, and ``rc`` written by
the wrapping shell when the run ends. The folder is created atomically before the process starts, so a
second start of the same run id (an operator restarted between recording the id and starting) finds it
and does nothing. The run lives in its own process group: it outlives an operator restart (the state
is read back from the folder), and cancelling stops the whole group.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from lmops.crd.training import LMTrainingJobSpec
from lmops.pipeline.local import TASKS
from lmops.processes import group_alive, stop_group
from lmops.rollout import RunState

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([\w-]+)'")
FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
KFP_STATE = {"SUCCESS": "Succeeded", "FAILURE": "Failed", "SKIPPED": "Skipped", "CACHED": "Cached"}


def command(spec: LMTrainingJobSpec) -> list[str]:
    cmd = [sys.executable, "-m", "lmops.cli", "pipeline", "run", "--config", spec.config, "--json",
           "--model-name", spec.model_name, "--runner", "inprocess", "--until", "register"]
    for item in spec.override_list():
        cmd += ["--set", item]
    for src in spec.sources:
        cmd += ["--source", src]
    return cmd


class LocalExecutor:
    _children: dict[str, subprocess.Popen] = {}  # this process's runs, to collect their exit (no zombies)

    def __init__(self, runs_dir: Path, tracking_uri: str | None):
        self.runs_dir = Path(runs_dir)
        self.tracking_uri = tracking_uri

    def _dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def start(self, run_id: str, spec: LMTrainingJobSpec) -> bool:
        """Start the run unless it exists; True when this call started it."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        d = self._dir(run_id)
        try:
            d.mkdir()
        except FileExistsError:
            return False
        cmd = command(spec)
        (d / "cmd.json").write_text(json.dumps(cmd))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        tracking = spec.mlflow_tracking_uri or self.tracking_uri
        if tracking:
            env["MLFLOW_TRACKING_URI"] = tracking
        env["LMOPS_PIPELINE_RUN_ID"] = run_id
        # one state folder for all runs: the local Ray runtime a run starts is reused by the next
        # (`LMOPS_STATE_DIR=<runs_dir>/state lmops stop` stops it)
        env.setdefault("LMOPS_STATE_DIR", str(self.runs_dir / "state"))
        # the shell records the exit status where a restarted operator can read it
        wrapper = ['/bin/sh', '-c', '"$@" > "$LMOPS_RUN_DIR/log" 2>&1; echo $? > "$LMOPS_RUN_DIR/rc.tmp";'
                   ' mv "$LMOPS_RUN_DIR/rc.tmp" "$LMOPS_RUN_DIR/rc"', "lmops-run", *cmd]
        proc = subprocess.Popen(wrapper, env={**env, "LMOPS_RUN_DIR": str(d)}, cwd=d, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        (d / "pid").write_text(str(proc.pid))
        self._children[run_id] = proc
        return True

    def state(self, run_id: str) -> RunState | None:
        d = self._dir(run_id)
        if not d.is_dir():
            return None
        child = self._children.get(run_id)
        if child is not None:
            child.poll()  # collect it if it ended
        log = (d / "log").read_text(errors="replace") if (d / "log").exists() else ""
        stages, current = _stages(log)
        if (d / "rc").exists():
            rc = int((d / "rc").read_text().strip() or 1)
            summary = _summary(log)
            if rc == 0 and summary is not None:
                version, metrics = _registered(summary)
                return RunState("Succeeded", stages, None, version, metrics,
                                f"registered {summary.get('registered')}" if version else "nothing registered")
            if rc in (-15, 143, 137):
                return RunState("Cancelled", stages, None, message="stopped")
            return RunState("Failed", stages, None, message=_last_error(log, rc))
        pid = int((d / "pid").read_text()) if (d / "pid").exists() else None
        if pid is None or not group_alive(pid):
            return RunState("Failed", stages, None, message="the run's processes ended without an exit status"
                            " (killed with the machine or the operator's pod?)")
        return RunState("Running", stages, current)

    def cancel(self, run_id: str) -> None:
        d = self._dir(run_id)
        if not (d / "pid").exists() or (d / "rc").exists():
            return
        pid = int((d / "pid").read_text())
        child = self._children.pop(run_id, None)
        stop_group(pid, grace=10, reap=(lambda: child.poll() is not None) if child else None)
        if not (d / "rc").exists():
            (d / "rc").write_text("143\n")


def _stages(log: str) -> tuple[dict[str, str], str | None]:
    stages = {t: "Pending" for t in TASKS if t != "deploy"}
    current = None
    for line in ANSI.sub("", log).splitlines():
        if m := STARTED.search(line):
            stages[m.group(1)] = "Running"
            current = m.group(1)
        elif m := FINISHED.search(line):
            stages[m.group(1)] = KFP_STATE.get(m.group(2), m.group(2).title())
    return stages, current


def _summary(log: str) -> dict | None:
    at = log.rfind("\n{\n")
    if at < 0:
        at = 0 if log.startswith("{") else -1
    if at < 0:
        return None
    try:
        return json.loads(log[at:])
    except json.JSONDecodeError:
        return None


def _registered(summary: dict) -> tuple[str | None, dict[str, float]]:
    uri = summary.get("registered") or ""
    version = uri.rsplit("/", 1)[1] if uri.startswith("models:/") and uri.count("/") >= 2 else None
    variants = summary.get("variants") or {}
    best = variants.get("fp32") or next(iter(variants.values()), {})
    metrics = {"perplexity": best.get("perplexity"), "bitsPerByte": best.get("bits_per_byte")}
    return version, {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _last_error(log: str, rc: int) -> str:
    lines = [ln for ln in ANSI.sub("", log).splitlines() if ln.strip()]
    tail = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
    return f"exit status {rc}: {tail[-500:]}"
