"""Where an LMTrainingJob's pipeline runs: ``local`` (the operator runs `lmops pipeline run`) or ``kfp``
(a Kubeflow Pipelines run). Both start idempotently by run id, report a RunState and cancel."""

from __future__ import annotations

from lmops.crd.training import LMTrainingJobSpec


def for_spec(spec: LMTrainingJobSpec, settings):
    if spec.executor.type == "kfp":
        from lmops.operator.executors.kfp import KfpExecutor

        return KfpExecutor(spec.executor.kfp.host, settings.kfp_client_factory)
    from lmops.operator.executors.local import LocalExecutor

    return LocalExecutor(settings.runs_dir, settings.tracking_uri)
