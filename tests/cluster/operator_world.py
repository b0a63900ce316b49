"""What the operator tests on `lmops cluster` share: the operator in its pod from the Helm chart; the operator's RBAC
in a test namespace and a kubeconfig with its ServiceAccount's token, for the operator as a real process where a
test needs one; model versions in a real MLflow; waiting."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path


from lmops.operator.in_pod import OperatorPod, install_operator
from lmops.operator.local import OperatorProcess as Operator
from lmops.operator.local import service_account_kubeconfig  # noqa: F401 (the tests' import point)
from lmops.operator.local import start_operator as _start

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "registry"))  # chain.py: real, small registered model directories
SECRET = "operator-tests-webhook-secret"
PROBE = ["the registry keeps model versions with tags aliases and lineage",
         "a served model can always be traced back to its datasets and raw sources",
         "digests of checkpoints tokens datasets and raw sources"]


def start_operator(kubeconfig: Path, namespace: str, tracking_uri: str, work: Path, *, poll_s: float = 2.0,
                   webhook_port: int | None = None, failpoint: str | None = None) -> Operator:
    """``failpoint``: the operator SIGKILLs itself there (lmops.failpoints)."""
    return _start(kubeconfig, namespace, tracking_uri, work, poll_s=poll_s, webhook_port=webhook_port,
                  webhook_secret=SECRET, env={"LMOPS_FAILPOINT": failpoint} if failpoint else None)


def install_operator_pod(cluster, namespace: str, tracking_uri: str, image: str, *, poll_s: float = 2.0,
                         webhooks: bool = False) -> OperatorPod:
    """The operator in its pod (`helm install` of helm/lmops, release ``op``: its objects ``op-operator*`` stay
    clear of manifests/rbac's ``lmops-operator``), MLflow at ``tracking_uri`` as pods reach it."""
    return install_operator(cluster, namespace, tracking_uri, image, poll_s=poll_s, release="op",
                            webhook_secret=SECRET if webhooks else None)


def stop_operator(op: Operator | OperatorPod) -> None:
    """A test's end: a process stopped; a pod's Deployment deleted and its pod waited for (no `helm uninstall`:
    its post-delete hook Job would cost a pod start, and the test's namespace, deleted next, takes the rest)."""
    if isinstance(op, OperatorPod):
        op.stop(uninstall=False)
    else:
        op.stop()


def wait_for(what: str, fn, timeout: float, interval: float = 0.3, operator: Operator | OperatorPod | None = None,
             describe=None):
    deadline = time.time() + timeout
    last, checked = None, 0.0
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        if operator is not None and time.time() - checked > 2:  # a pod's check is an API call: not every poll
            checked = time.time()
            if failure := operator.failure():
                raise AssertionError(f"{failure} waiting for {what}:\n{operator.text()[-4000:]}")
        time.sleep(interval)
    tail = f"\noperator log:\n{operator.text()[-4000:]}" if operator else ""
    state = f"\nstate: {describe()}" if describe else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}{state}{tail}")


def make_worse(checkpoint: Path, out: Path) -> Path:
    """A version that loads and serves but scores far worse: the final norm scaled up (confident, wrong)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from lmops.manifest import read_manifest, run_stage

    def produce(tmp: Path) -> dict:
        model = AutoModelForCausalLM.from_pretrained(checkpoint)
        with torch.no_grad():
            model.model.norm.weight.mul_(40.0)
        model.save_pretrained(tmp)
        for f in checkpoint.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "generation_config")):
                shutil.copy2(f, tmp / f.name)
        return {"counts": {}}

    run_stage("worse", out, code="tests.cluster", config={"norm_scale": 40.0},
              inputs={"checkpoint": {"digest": read_manifest(checkpoint).digest, "path": str(checkpoint)}},
              produce=produce, log=lambda s: None)
    return out


def register_versions(tracking_uri: str, root: Path) -> tuple[str, dict[str, str]]:
    """One model, four versions: good1 and good2 (untrained, two seeds: the same bits per byte within a few
    percent), worse (loads, scores far worse), broken (no model files: never loads)."""
    from mlflow import MlflowClient

    from chain import make_chain, make_checkpoint
    from lmops.config import RegistryConfig
    from lmops.gates import Verdict
    from lmops.registry import Variant, register_variants

    chain = make_chain(root / "chain")
    dirs = {"good1": chain.checkpoint, "good2": make_checkpoint(chain.tokens, root / "good2", seed=1)}
    dirs["worse"] = make_worse(chain.checkpoint, root / "worse")
    name = f"lm-{uuid.uuid4().hex[:6]}"
    cfg = RegistryConfig(tracking_uri=tracking_uri, model_name=name)
    out = {}
    for label, d in dirs.items():
        reg = register_variants([Variant("fp32", d, {"perplexity": 1.0}, Verdict(True, ["PASS test"]))], cfg)
        out[label] = reg.versions[0].version
    client = MlflowClient(tracking_uri)
    run = client.create_run("0")
    out["broken"] = str(client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version)
    return name, out


def md_body(name: str, model: str, **rollout) -> dict:
    return {"apiVersion": "lmops.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            # half a core each: the stable and the canary predictor pods fit the 2-core node side by side
            "spec": {"model": {"name": model, "alias": "champion"}, "serving": {"cpu": "500m"},
                     "rollout": {"steps": [{"trafficPercent": 20, "pauseSeconds": 1},
                                           {"trafficPercent": 50, "pauseSeconds": 1}],
                                 "gates": {"readyTimeoutSeconds": 120, "maxErrorRate": 0.05, "latencyP95Ms": 10000,
                                           "qualityProbe": {"texts": PROBE, "maxRegression": 0.10}},
                                 **rollout}}}
