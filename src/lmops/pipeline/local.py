"""``make run`` / ``lmops pipeline run``: the Kubeflow pipeline on one machine, through kfp's local runner.

The same ``pipelines/lmops_pipeline.py`` that compiles for the Kubeflow UI runs here with kfp's
``SubprocessRunner``: each task is a subprocess of this environment, artifacts are folders under
``<state>/kfp/<run>/``, training uses a local Ray, the registry is a local MLflow server (sqlite, started
on first use and kept for the next run), training and distillation connect to one local Ray runtime
(``ray start --head``, likewise kept) and deploy starts a local KServe model server. lmops' stage cache
(``<state>/cache``) makes a second run reuse every stage whose inputs and config did not change.

Ctrl-C stops the running task and everything it started (its Ray job's workers included); the local
servers the run reuses (MLflow, Ray, the model server) stay up until ``make stop``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lmops.config import REPO_ROOT, load_config
from lmops.errors import LmopsError
from lmops.pipeline import servers
from lmops.pipeline.summary import TASKS, print_summary, run_summary  # noqa: F401 (TASKS, print_summary: this module's interface)
from lmops.train.ray_head import LOCAL_RAY_ENV

LAUNCHERS = ("local", "kuberay")
RUNNERS = ("subprocess", "container", "inprocess")
DEPLOY_TARGETS = ("local", "kubernetes")


class PipelineRunError(LmopsError, RuntimeError):
    """A task of the local pipeline run failed; its log is above, the message names it."""


def run_pipeline(config: str, overrides: list[str] | None = None, *, model_name: str = "",
                 sources: list[str] | None = None, tracking_uri: str | None = None,
                 ray_address: str | None = None, quiet_kfp: bool = True, launcher: str = "local",
                 deploy_target: str = "local", runner: str = "subprocess", until: str | None = None) -> dict[str, Any]:
    """Run the whole pipeline locally; returns the summary (see ``summarize``).

    tracking_uri: an MLflow server to use instead of the recorded local one (started when missing).
    ray_address: a Ray cluster for the train and compress tasks instead of the recorded local runtime
    (started when missing).
    launcher / deploy_target: the pipeline's parameters. "kuberay" submits the train task's RayJob (and build's
    and tokenize's when their engine is ray or auto) and
    "kubernetes" applies the InferenceService to the cluster $KUBECONFIG names (`lmops cluster up` on this
    machine); kuberay needs kuberay.staging_uri, since kfp's local artifacts are folders the job cannot read.
    runner: "subprocess" (kfp's SubprocessRunner, this environment), "container" (kfp's DockerRunner: each
    task in the lmops image, through docker or podman; lmops.pipeline.containers) or "inprocess" (no kfp: the
    same steps called in this process, outputs under the config's workdir; lmops.pipeline.inprocess)."""
    # the run sets these for its tasks (subprocesses) and its own steps; the caller gets its environment back,
    # so that e.g. a 127.0.0.1 MLflow URI does not outlive the run and reach a later RayJob's pods
    with _environment_kept(RUN_ENV):
        return _run_pipeline(config, overrides, model_name=model_name, sources=sources, tracking_uri=tracking_uri,
                             ray_address=ray_address, quiet_kfp=quiet_kfp, launcher=launcher,
                             deploy_target=deploy_target, runner=runner, until=until)


RUN_ENV = ("LMOPS_STATE_DIR", "PATH", "RAY_AUTH_MODE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", LOCAL_RAY_ENV)
"""The variables a pipeline run sets in this process, put back as they were when it ends."""


@contextlib.contextmanager
def _environment_kept(names: tuple[str, ...]):
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            _restore_env(name, value)


def _run_pipeline(config: str, overrides: list[str] | None, *, model_name: str, sources: list[str] | None,
                  tracking_uri: str | None, ray_address: str | None, quiet_kfp: bool, launcher: str,
                  deploy_target: str, runner: str, until: str | None) -> dict[str, Any]:
    if launcher not in LAUNCHERS or deploy_target not in DEPLOY_TARGETS or runner not in RUNNERS:
        raise LmopsError(f"launcher={launcher!r}, deploy_target={deploy_target!r}, runner={runner!r}: expected a"
                         f" launcher in {LAUNCHERS}, a deploy target in {DEPLOY_TARGETS} and a runner in {RUNNERS}")
    if until is not None and (until != "register" or runner != "inprocess"):
        raise LmopsError(f"until={until!r} with runner={runner!r}: a run can stop after register (no deploy) with the"
                         " inprocess runner only (the compiled pipeline always ends with deploy)")
    cfg = load_config(config, overrides)  # a bad config fails here, before anything starts
    in_containers = runner == "container"
    if in_containers:  # no image, no engine: say so now (`make images`), before any server starts
        from lmops.images.build import image_for_run
        from lmops.images.engine import detect

        engine = detect()
        image = image_for_run("cuda" if cfg.train.use_gpu else "cpu", cfg.image, engine)
    if launcher == "kuberay":  # say so now rather than after build and tokenize
        from lmops.train.kuberay.staging import staging_prefix

        staging_prefix(cfg, "kfp's local runner keeps the artifacts in local folders")
    state = servers.state_dir()
    os.environ["LMOPS_STATE_DIR"] = str(state)
    # kfp runs each task with the first `python3` on PATH, and Ray workers too: make it this environment's
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.time()
    # MLflow and Ray each take 10-30 s to start on a small machine: start them side by side
    with ThreadPoolExecutor(2) as pool:
        mlflow = pool.submit(_timed, lambda: (tracking_uri, False) if tracking_uri else servers.ensure_mlflow())
        # in containers each training task runs a Ray of its own (the host's would run workers outside the image)
        ray = pool.submit(_timed, lambda: (ray_address, False) if ray_address or in_containers
                          else servers.ensure_ray())
        (url, fresh_mlflow), mlflow_s = mlflow.result()
        (address, fresh_ray), ray_s = ray.result()
    os.environ["MLFLOW_TRACKING_URI"] = url
    print(f"[run] MLflow server {url} ({'started' if fresh_mlflow else 'reused'}, {mlflow_s:.1f}s)", flush=True)
    if in_containers:
        print(f"[run] tasks run in {image} ({engine.name}); Ray starts inside the training tasks"
              f"{'' if not address else f' (RAY_ADDRESS {address})'}", flush=True)
    else:
        print(f"[run] Ray runtime {address} ({'started' if fresh_ray else 'reused'}, {ray_s:.1f}s)", flush=True)

    in_process = runner == "inprocess"
    root = Path(cfg.workdir).resolve() if in_process else state / "kfp" / time.strftime("%Y%m%d-%H%M%S")
    args = dict(config=config, overrides=list(overrides or []), model_name=model_name or cfg.registry.model_name,
                sources=list(sources or []), num_workers=cfg.train.num_workers,
                gpus_per_worker=1 if cfg.train.use_gpu else 0, launcher=launcher,
                # with kuberay the job's workers get the GPUs, the task itself none
                train_pod_gpus=cfg.train.num_workers if cfg.train.use_gpu and launcher == "local" else 0,
                mlflow_tracking_uri=url, deploy_target=deploy_target, cache_dir=str(Path(cfg.cache_dir).resolve()) if cfg.cache_dir else "")
    from lmops.processes import descendants

    # what already runs below this process (a caller's own servers, Ray...) is not the run's to stop
    before = set(descendants(os.getpid()))
    # the tasks are subprocesses: the environment is how they find the shared Ray (lmops.train.ray_train)
    if address:
        os.environ["RAY_ADDRESS"] = address
        if not ray_address:  # our own runtime on this machine: its CPUs are all there will be (no autoscaler)
            os.environ[LOCAL_RAY_ENV] = "1"
    try:
        if in_process:
            from lmops.pipeline.inprocess import run_chain

            rows = run_chain(root, **args, until=until)
            return run_summary(rows, time.time() - started, run_dir=str(root), mlflow_url=url)
        from kfp import local

        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from pipelines.lmops_pipeline import lmops_pipeline

        with contextlib.ExitStack() as stack, _kfp_output(quiet_kfp), warnings.catch_warnings():
            if in_containers:
                from lmops.pipeline.containers import container_runner

                kfp_runner = stack.enter_context(container_runner(
                    cfg, engine=engine, image=image, state=state, run_root=root, sources=list(sources or []),
                    env={"MLFLOW_TRACKING_URI": url, **({"RAY_ADDRESS": address} if address else {})}))
            else:
                kfp_runner = local.SubprocessRunner(use_venv=False)
            local.init(runner=kfp_runner, pipeline_root=str(root), raise_on_error=True)
            # "custom or non-Python base image ... in a Python environment": deliberate, the image is this venv
            warnings.filterwarnings("ignore", message=".*non-Python base image")
            # display names, resources, selectors: compiled into the YAML, meaningless for local subprocesses
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
            lmops_pipeline(**args)
    except KeyboardInterrupt:
        _stop_children(before)
        raise
    except RuntimeError as e:
        _stop_children(before)
        if in_process:  # the step's own error, raised in this process: nothing of kfp's to add
            raise
        failed = _failed_task(root)
        raise PipelineRunError(f"pipeline run failed{f' in task {failed!r}' if failed else ''} (its log is above;"
                               f" outputs under {root}): {e}") from None
    return summarize(root, time.time() - started, mlflow_url=url)


def _timed(fn):
    t0 = time.time()
    return fn(), time.time() - t0


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _stop_children(before: set[int]) -> None:
    """Whatever the interrupted task left running below this process (the task itself, Ray, ...), and nothing
    that ran before the pipeline started: stopping a caller's Ray would take the caller down with it."""
    from lmops.processes import descendants, stop_tree

    left = stop_tree([p for p in descendants(os.getpid()) if p not in before])
    if left:
        print(f"[run] could not stop processes {left}", file=sys.stderr)


def _failed_task(root: Path) -> str | None:
    """The task that ran last and wrote no executor output: the one that failed."""
    dirs = [d for d in root.glob("*/*") if d.is_dir() and not (d / "executor_output.json").exists()]
    return max(dirs, key=lambda d: d.stat().st_mtime).name if dirs else None


# ---------------------------------------------------------------- kfp's log, trimmed
@contextlib.contextmanager
def _kfp_output(quiet: bool):
    """kfp prints each task's full executor input (our config included) and loader chatter: keep the task
    boundaries, statuses and the stages' own log lines."""
    if not quiet:
        yield
        return
    real = sys.stdout
    sys.stdout = _Trim(real)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = real


class _Trim(io.TextIOBase):
    DROP = ("Looking for component", "Loading KFP component", "Wrote executor output file", "Streamed logs:",
            # Ray 2.60 without its dashboard: harmless, every few seconds
            "Failed to query Ray Train Controller actor state")

    def __init__(self, out):
        self.out, self.buf, self.skipping, self.last = out, "", False, None

    def write(self, s: str) -> int:
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(line)
        return len(s)

    def _line(self, line: str) -> None:
        text = line.strip()
        if "Got executor_input:" in text:
            self.skipping = "json"  # a JSON block follows; it ends with a lone closing brace
            return
        if self.skipping == "json":
            if line.rstrip() in ("    }", "}"):
                self.skipping = False
            return
        if re.match(r"\d\d:\d\d:\d\d", text):
            self.skipping = False
            if re.search(r"Task .* outputs:$", text):
                self.skipping = "outputs"  # artifact reprs with all their metadata: the summary has them
                return
        if self.skipping:
            return
        if not text or any(d in text for d in self.DROP) or set(text) <= {"-"} or text == self.last:
            return  # (Ray forwards each worker line twice)
        self.last = text
        self.out.write(line + "\n")

    def flush(self) -> None:
        if self.buf:
            self._line(self.buf)
            self.buf = ""
        self.out.flush()


# ---------------------------------------------------------------- the closing summary
def task_rows(root: Path) -> dict[str, dict[str, Any]]:
    """task name -> the row its step returned, read back from the metadata kfp wrote for its output artifact."""
    rows = {}
    for f in sorted(root.rglob("executor_output.json")):
        data = json.loads(f.read_text())
        metas = [(a.get("artifacts") or [{}])[0].get("metadata", {}) for a in data.get("artifacts", {}).values()]
        row = next((m for m in metas if "status" in m), None)
        if row is not None:
            rows[f.parent.name] = row
    return rows


def summarize(root: Path, total_s: float, mlflow_url: str = "") -> dict[str, Any]:
    return run_summary(task_rows(root), total_s, run_dir=str(root), mlflow_url=mlflow_url)
