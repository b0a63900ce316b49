"""The pipeline's chain in this process, without kfp: ``lmops pipeline run --runner inprocess``.

The same ``lmops.pipeline.steps`` the kfp components call, in the order and under the condition that
``pipelines/lmops_pipeline.py`` wires them (register and deploy only when the evaluation gate passed), each
given the config YAML resolve-config wrote, as a kfp task gets it. No task processes: no interpreter start
and imports per task, and a debugger or profiler sees the whole chain. Outputs go to ``<root>/<output>``
(by default the config's workdir, ``runs/<config>/``: dataset, tokens, checkpoint, eval, compressed, ...),
the folders the stage commands (``lmops train`` ...) read by default.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from lmops.pipeline import steps


def run_chain(root: Path, *, config: str, overrides: list[str], model_name: str, sources: list[str],
              num_workers: int, gpus_per_worker: int, launcher: str, train_pod_gpus: int, mlflow_tracking_uri: str,
              deploy_target: str, cache_dir: str, until: str | None = None) -> dict[str, dict[str, Any]]:
    """Run every step (``until="register"``: no deploy); returns task name -> the row its step returned (what a
    kfp task records). Each task's start and end is printed in kfp's words, which the operator's local executor
    reads for the stages' states."""
    out = {name: str(root / name) for name in ("config", "dataset", "tokens", "checkpoint", "eval", "compressed",
                                               "registration", "endpoint")}
    run_id = f"inprocess-{uuid.uuid4().hex[:12]}"
    rows: dict[str, dict[str, Any]] = {}

    def task(name: str, fn) -> dict[str, Any]:
        print(f"Executing task '{name}'", flush=True)
        rows[name] = fn()
        print(f"Task '{name}' finished with status {'CACHED' if rows[name].get('status') == 'cached' else 'SUCCESS'}",
              flush=True)
        return rows[name]

    task("resolve-config", lambda: steps.resolve_config(
        config, overrides, out["config"], model_name=model_name, sources=sources, num_workers=num_workers,
        gpus_per_worker=gpus_per_worker, mlflow_tracking_uri=mlflow_tracking_uri, deploy_target=deploy_target,
        cache_dir=cache_dir))
    resolved = (Path(out["config"]) / steps.CONFIG_FILE).read_text()  # what every later kfp task gets
    task("build", lambda: steps.build(resolved, out["dataset"], launcher))
    task("tokenize", lambda: steps.tokenize(resolved, out["dataset"], out["tokens"], launcher))
    if launcher == "kuberay":
        task("train", lambda: steps.train_on_kuberay(resolved, out["tokens"], out["checkpoint"],
                                                     job_name=f"lmops-{run_id}", checkpoint_uri=out["checkpoint"] + ".rayjob",
                                                     tokens_dir=out["tokens"]))
    else:
        task("train", lambda: steps.train(resolved, out["tokens"], out["checkpoint"], gpus=train_pod_gpus))
    task("evaluate", lambda: steps.evaluate(resolved, out["checkpoint"], out["tokens"], out["eval"]))
    task("compress", lambda: steps.compress(resolved, out["checkpoint"], out["tokens"], out["compressed"]))
    if rows["evaluate"]["gate_passed"]:
        task("register", lambda: steps.register(resolved, out["checkpoint"], out["eval"], out["compressed"],
                                                out["registration"], run_id))
        if until != "register":
            task("deploy", lambda: steps.deploy(resolved, rows["register"]["model_uri"], out["endpoint"]))
    return rows
