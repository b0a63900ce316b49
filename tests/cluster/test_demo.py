"""`make demo`'s main path, twice in a row on the session's `lmops cluster`: the first run fails on purpose (a
training job whose source does not exist), the second -- the same job name, now with the micro preset -- must
clean what the first left and go all the way on pods (the operator's from the Helm chart, the stage Jobs, the
RayJob's head and worker, the predictors: train, register, serve, canary, a broken version rolled back). After
each run no process the demo started may be left: every process that inherited the run's marker in its
environment (MLflow, the demo's S3, the relays) must be gone."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from micro_pipeline import MICRO, write_corpus

from lmops import kube
from lmops.crd import API_VERSION
from lmops.operator.demo import NS

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
MARK = "LMOPS_DEMO_TEST_MARK"


def job_file(folder: Path, sources: list[str], micro: bool) -> Path:
    job = yaml.safe_load((REPO / "manifests" / "samples" / "lmtrainingjob.yaml").read_text())
    job["metadata"]["name"] = "demo-lm"
    job["spec"]["sources"] = sources
    if micro:  # the sample names tiny (what a user runs); the tests' preset is micro
        job["spec"]["config"] = "micro"
        job["spec"]["overrides"] = dict(item.split("=", 1) for item in MICRO)
    path = folder / f"job-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def left_behind(mark: str) -> list[str]:
    """Processes whose environment holds ``MARK=mark``: started by the demo run, directly or not."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {cmdline[:200]}")
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def demo(kube_cluster, work: Path, job: Path) -> tuple[int, str]:
    mark = uuid.uuid4().hex
    out = subprocess.run([sys.executable, "-m", "lmops.operator.demo", "--cluster-folder", kube_cluster.folder,
                          "--work", str(work), "--job", str(job)], capture_output=True, text=True, timeout=1500,
                         env={**os.environ, MARK: mark}, cwd=REPO)
    text = out.stdout + out.stderr
    assert left_behind(mark) == [], f"processes of the demo outlived it:\n{text[-3000:]}"
    return out.returncode, text


@pytest.fixture
def demo_namespace(kube_cluster):
    """The demo's namespace, removed afterwards: its objects stay by design (the demo's deployment keeps
    serving), and its predictor pod would hold a CPU of the session's 2-core node from every later test. The
    demo's operator is gone by then, so its finalizers are released first (as the chart's uninstall does)."""
    from lmops.operator.run import release_finalizers

    yield NS
    admin = kube_cluster.client()
    release_finalizers([NS], admin)
    kube.delete("v1", "Namespace", NS, None, client=admin)
    kube.wait_for("v1", "Namespace", NS, None, lambda o: o is None, timeout_s=180, client=admin)


def test_demo_runs_again_after_a_failed_run_and_leaves_nothing_running(kube_cluster, demo_namespace, tmp_path):
    work = tmp_path / "demo"
    rc, text = demo(kube_cluster, work, job_file(tmp_path, [str(tmp_path / "no-such-corpus")], micro=True))
    assert rc != 0 and "the training job failed" in text, text[-3000:]

    rc, text = demo(kube_cluster, work, job_file(tmp_path, [str(write_corpus(tmp_path / "corpus"))], micro=True))
    assert rc == 0, text[-5000:]
    cleaned = next(line for line in text.splitlines() if "cleaned what an earlier run left" in line)
    assert "LMTrainingJob demo-lm (Failed)" in cleaned and "MLflow data" in cleaned, cleaned
    assert "rolled back by itself" in text, text[-3000:]
    assert "the operator runs in pod lmops-operator-" in text, text[-5000:]
    ray_pods = text.split("training on KubeRay")[1].split("$ kubectl get lmtrainingjobs")[0]
    assert "-head-" in ray_pods and "-worker-" in ray_pods, ray_pods
    canary = text.split("$ kubectl get pods -l component=predictor")[1].split("[demo")[0]
    assert canary.count("predictor-0000") >= 2, canary  # the stable and the canary revision's pods
    job = kube.get(API_VERSION, "LMTrainingJob", "demo-lm", NS, client=kube_cluster.client())["status"]
    assert job["phase"] == "Succeeded" and job["registeredVersion"] and job["metrics"]["perplexity"] > 1
    assert {s["name"]: s["state"] for s in job["stages"]}["register"] == "Succeeded"
    md = kube.get(API_VERSION, "ModelDeployment", "lmops-demo", NS, client=kube_cluster.client())["status"]
    assert md["phase"] == "Stable" and md["lastRollback"]["aliasReverted"] is True
