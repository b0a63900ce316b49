"""The kfp executor: one Kubeflow Pipelines run of the compiled pipeline per LMTrainingJob.

The run's display name is the run id the operator recorded, so starting is idempotent: a run with that
name in the experiment is found instead of created twice. The request is what ``kfp.Client.run_pipeline``
sends (the compiled pipeline spec, its parameters, caching and service account); ``run_request``
builds its parts without a backend, which is how the tests check them (no Kubeflow Pipelines backend
runs on these machines).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lmops.crd.training import LMTrainingJobSpec
from lmops.pipeline.compile import PIPELINE_YAML
from lmops.rollout import RunState

# Kubeflow Pipelines v2beta1 run states -> LMTrainingJob phases
STATES = {"PENDING": "Pending", "RUNNING": "Running", "SUCCEEDED": "Succeeded", "SKIPPED": "Succeeded",
          "FAILED": "Failed", "CANCELING": "Running", "CANCELED": "Cancelled", "PAUSED": "Running",
          "RUNTIME_STATE_UNSPECIFIED": "Pending"}


@dataclass(frozen=True)
class RunRequest:
    run_name: str
    experiment: str
    namespace: str | None
    pipeline_package: str
    arguments: dict[str, Any]
    enable_caching: bool
    service_account: str | None


def arguments(spec: LMTrainingJobSpec) -> dict[str, Any]:
    """The pipeline's parameters (pipelines/lmops_pipeline.py) from the spec."""
    out: dict[str, Any] = {
        "config": spec.config, "overrides": spec.override_list(), "model_name": spec.model_name,
        "sources": list(spec.sources), "num_workers": spec.ray.workers, "gpus_per_worker": spec.ray.gpus_per_worker,
        "launcher": spec.ray.launcher, "deploy_target": "kubernetes",
    }
    if spec.mlflow_tracking_uri:
        out["mlflow_tracking_uri"] = spec.mlflow_tracking_uri
    return out


def run_request(run_id: str, spec: LMTrainingJobSpec) -> RunRequest:
    k = spec.executor.kfp
    return RunRequest(run_id, k.experiment, k.namespace, k.pipeline_package or str(PIPELINE_YAML), arguments(spec),
                      k.enable_caching, k.service_account)


def run_body(req: RunRequest, experiment_id: str):
    """The V2beta1Run ``kfp.Client.run_pipeline`` posts, built by kfp's own code path."""
    import kfp
    import kfp_server_api

    config = kfp.Client._create_job_config(None, params=req.arguments, pipeline_package_path=req.pipeline_package,
                                           pipeline_id=None, version_id=None, enable_caching=req.enable_caching,
                                           cache_key=None, pipeline_root=None)
    return kfp_server_api.V2beta1Run(experiment_id=experiment_id, display_name=req.run_name,
                                     pipeline_spec=config.pipeline_spec, runtime_config=config.runtime_config,
                                     service_account=req.service_account)


class KfpExecutor:
    def __init__(self, host: str, client_factory: Callable[[str], Any] | None = None):
        self.host = host
        self.client_factory = client_factory or _client

    def _find(self, client, run_id: str):
        flt = json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": run_id}]})
        runs = client.list_runs(filter=flt, page_size=5).runs or []
        return runs[0] if runs else None

    def start(self, run_id: str, spec: LMTrainingJobSpec) -> bool:
        client = self.client_factory(self.host)
        if self._find(client, run_id) is not None:
            return False
        req = run_request(run_id, spec)
        experiment = client.create_experiment(req.experiment, namespace=req.namespace)  # get-or-create
        client.run_pipeline(experiment_id=experiment.experiment_id, job_name=req.run_name,
                            pipeline_package_path=req.pipeline_package, params=req.arguments,
                            enable_caching=req.enable_caching, service_account=req.service_account)
        return True

    def state(self, run_id: str) -> RunState | None:
        run = self._find(self.client_factory(self.host), run_id)
        if run is None:
            return None
        details = getattr(run, "run_details", None)
        stages = {}
        for task in (getattr(details, "task_details", None) or []):
            name = getattr(task, "display_name", None)
            if name and not name.startswith(("root", "exit-handler")):
                stages[name] = STATES.get(str(task.state), str(task.state).title())
        error = getattr(run, "error", None)
        return RunState(STATES.get(str(run.state), "Running"), stages,
                        message=getattr(error, "message", "") or "" if error else "")

    def cancel(self, run_id: str) -> None:
        client = self.client_factory(self.host)
        run = self._find(client, run_id)
        if run is not None and STATES.get(str(run.state)) in ("Pending", "Running"):
            client.terminate_run(run.run_id)


def _client(host: str):
    import kfp

    return kfp.Client(host=host)


def compiled_inputs(package: str | Path = PIPELINE_YAML) -> dict[str, dict[str, Any]]:
    """The compiled pipeline's declared parameters (name -> {parameterType, defaultValue, ...})."""
    import yaml

    doc = next(yaml.safe_load_all(Path(package).read_text()))
    return doc["root"]["inputDefinitions"]["parameters"]
