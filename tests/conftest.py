"""Session-wide real services for tests: one moto S3 server (more join as stages arrive)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests that stop the machine's one node (the session cluster's) run after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("stops_the_node") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test on the session's cluster shows the last lines of the stand-ins', kube-proxy's and the
    kubelet's logs beside its traceback: CI keeps only what pytest prints, and the cluster is gone after it."""
    report = (yield).get_result()
    cluster = getattr(item, "funcargs", {}).get("kube_cluster")
    if not report.failed or cluster is None:
        return
    from lmops.cluster import control_plane, node, supervise
    from lmops.serve.endpoint import tail

    for name in (control_plane.KSERVE_STANDIN, control_plane.KUBERAY_STANDIN, node.KUBE_PROXY, node.KUBELET):
        log = supervise.log_path(Path(cluster.folder), name)
        if log.is_file():
            report.sections.append((f"lmops cluster log {name}.log (last lines)",
                                    "\n".join(line[:300] for line in tail(log, 20).splitlines())))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"port {port} not open after {timeout}s")


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real moto_server process on 127.0.0.1 (an S3-compatible endpoint), stopped at the end."""
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    assert exe, "moto_server not installed (pip install 'moto[server]')"
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """A fresh bucket on the moto server; the environment points lmops.storage at it.

    Yields (boto3 client, bucket name).
    """
    import boto3

    monkeypatch.setenv("LMOPS_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"lmops-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket


@pytest.fixture(scope="session")
def tiny_tokens(tmp_path_factory) -> Path:
    """A real tokens/ directory (512-token BPE, ~150k train tokens) built once per session."""
    from tiny_tokens import make_tokens_dir

    return make_tokens_dir(tmp_path_factory.mktemp("tiny") / "tokens")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tokens, tmp_path_factory) -> Path:
    """A tiny-preset model trained briefly on tiny_tokens, saved as a HF model directory."""
    import torch

    from lmops.config import config_from_dict
    from lmops.train.loop import train_single

    torch.set_num_threads(1)
    cfg = config_from_dict({"train": {"max_steps": 40, "micro_batch_size": 8, "block_size": 64, "lr": 3e-3,
                                      "warmup_steps": 5, "eval_every": 40, "eval_batches": 2}})
    out = tmp_path_factory.mktemp("tiny") / "model"
    train_single(cfg, tiny_tokens, out, log=None)
    return out


@pytest.fixture(scope="session")
def _ray_session():
    """One local Ray for the whole test session (start-up costs seconds; workers are reused)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray workers and kfp's local runner call the first python3 on PATH: make it this interpreter's.
    os.environ["PATH"] = f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"
    import ray

    from lmops.train.ray_train import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_runtime(_ray_session):
    """The session's Ray, handed back as the test found it: a test that fails mid-run (its training thread
    still placed) would otherwise hold the 2 CPUs and every later run would wait for them."""
    ray = _ray_session
    from ray._private import state

    actors_before = set(state.actors())
    groups_before = set(ray.util.placement_group_table())
    yield ray
    for actor_id, actor in state.actors().items():
        # a Ray Train run's controller and workers (not Ray's own singletons): their death ends the run still
        # waiting on them, like a crash
        if (actor_id not in actors_before and actor["State"] == "ALIVE" and actor["Pid"]
                and "Train" in actor["ActorClassName"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(actor["Pid"], signal.SIGKILL)
    for group_id, group in ray.util.placement_group_table().items():
        if group_id not in groups_before and group["state"] != "REMOVED":
            from ray.util.placement_group import PlacementGroup

            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))


@pytest.fixture(scope="session")
def ray_address(_ray_session) -> str:
    """The session Ray's GCS address, for subprocesses that connect to it (RAY_ADDRESS) instead of starting
    their own."""
    return _ray_session.get_runtime_context().gcs_address


# ---------------------------------------------------------------- MLflow (registry tests)
from lmops.registry.local_server import LOCAL_WEBHOOK_ENV, start_mlflow_server, stop_process_group  # noqa: E402,F401


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real MLflow tracking + registry server for the whole session (start-up is 10-40 s); its URL."""
    root = tmp_path_factory.mktemp("mlflow")
    proc, url = start_mlflow_server(root, str(root / "artifacts"), env=LOCAL_WEBHOOK_ENV)
    try:
        yield url
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="session")
def micro_stage_cache(tmp_path_factory) -> Path:
    """lmops' stage cache shared by the whole-pipeline runs on the micro config (tests/pipeline/test_local_run.py,
    test_uploaded_yaml.py): the second module finds build to compress cached, as a second `make run` does,
    instead of training again (minutes on 2 shared cores). Content-addressed: each still runs alone."""
    return tmp_path_factory.mktemp("micro-stage-cache")


# ---------------------------------------------------------------- Kubernetes (`lmops cluster`)
@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory):
    """One real control plane for the session (etcd, kube-apiserver with RBAC, controller-manager, the
    KServe and KubeRay stand-ins), started by the same code as `lmops cluster up`; KUBECONFIG points at
    it while the session runs. Builds the binaries first when they are missing (minutes, shown)."""
    from lmops.cluster import control_plane

    folder = tmp_path_factory.mktemp("cluster")
    echo = lambda line: print(line, file=sys.__stderr__, flush=True)  # noqa: E731 - past pytest's capture
    cluster = control_plane.up(folder, echo=echo)
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = cluster.kubeconfig
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old
        control_plane.down(folder, echo=lambda line: None)


@pytest.fixture
def kube_namespace(kube_cluster, request):
    """A fresh namespace per test, ready for pods (deleted afterwards; the namespace controller removes its
    objects and the kubelet stops their pods)."""
    from lmops import kube

    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, client=kube_cluster.client())
    # pods are refused until the namespace's default ServiceAccount has its token (the controller-manager's)
    kube.wait_for("v1", "ServiceAccount", "default", name, lambda sa: sa and sa.get("secrets"), timeout_s=60,
                  client=kube_cluster.client())
    yield name
    client = kube_cluster.client()
    kube.delete("v1", "Namespace", name, None, client=client)
    # wait (bounded) until its pods are gone: still terminating, they would hold the 2-CPU node's CPU while the
    # next test's pods wait to be scheduled. Not for the namespace itself: objects an absent operator still
    # holds by a finalizer keep it Terminating, pods or not.
    # A pod still there after 15 s is deleted at once (grace 0): the kubelet finalizes one whose container never
    # started (ImagePullBackOff) only a minute later, though nothing of it runs.
    start = time.monotonic()
    forced = False
    while time.monotonic() < start + 90:
        try:
            pods = kube.list_objects("v1", "Pod", name, client=client)[0]
            if not pods:
                break
            if not forced and time.monotonic() > start + 15:
                for pod in pods:
                    kube.delete("v1", "Pod", pod["metadata"]["name"], name, client=client, grace_period_s=0)
                forced = True
        except kube.KubeError:  # the API server busy: a slow cleanup is not this test's failure
            pass
        time.sleep(0.5)


@pytest.fixture
def kube_s3_secret(kube_cluster, kube_namespace) -> str:
    """The Secret ``s3-creds`` in the test's namespace: the moto S3 credentials (the ``s3`` fixture's), which a
    RayJob's pods get through envFrom (kuberay.env_from_secrets) as on a real cluster. Yields its name."""
    import base64

    from lmops import kube

    data = {k: base64.b64encode(b"testing").decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": kube_namespace},
                "data": data}, client=kube_cluster.client())
    return "s3-creds"


# ---------------------------------------------------------------- the lmops image on the node (predictor pods)
@pytest.fixture(scope="session")
def engine():
    from lmops.images.engine import detect

    return detect(install=True)


@pytest.fixture(scope="session")
def lmops_image(engine) -> str:
    """The lmops image, built through ``make images``' own code once per session and skipped when an image with
    the same build key (lock + Dockerfile + sources) is already in the engine. Cold on a fresh 2-core machine:
    podman's install (~15 s), the Debian base (1-2 min), the image (4 min); cached: a second or two."""
    from lmops.images.build import build

    started = time.time()
    built = build("cpu", engine=engine, log=lambda line: None)
    print(f"\n[images] {built.line()} ({time.time() - started:.0f}s here)", file=sys.__stderr__, flush=True)
    return built.ref


@pytest.fixture(scope="session")
def node_image(kube_cluster, engine, lmops_image) -> str:
    """The lmops image in the session node's containerd (what every InferenceService's predictor pod and its
    storage initializer run): loaded once per node, skipped when the node has that image ID."""
    from lmops.cluster import node_images

    loaded = node_images.load(Path(kube_cluster.folder), lmops_image, engine, log=lambda line: None)
    print(f"\n[images] {loaded.line()}", file=sys.__stderr__, flush=True)
    return lmops_image


def _relay_for_pods(url: str):
    """``url`` (a server of this session on 127.0.0.1) as pods reach it: lmops.cluster.pod_relay."""
    from lmops.cluster import pod_relay

    proc, relayed = pod_relay.start(url)
    try:
        yield relayed
    finally:
        pod_relay.stop(proc)


@pytest.fixture(scope="session")
def mlflow_for_pods(kube_cluster, mlflow_server):
    """The session's MLflow server as pods reach it (a predictor resolving ``models:/`` itself)."""
    yield from _relay_for_pods(mlflow_server)


@pytest.fixture(scope="session")
def moto_for_pods(kube_cluster, moto_endpoint):
    """The session's moto S3 server as pods reach it (KServe's storage initializer downloading s3://)."""
    yield from _relay_for_pods(moto_endpoint)


@pytest.fixture
def kserve_s3_account(kube_cluster, kube_namespace, moto_for_pods) -> str:
    """The ServiceAccount ``kserve-s3`` in the test's namespace, with the moto S3 credentials as KServe's storage
    initializer finds them: a Secret attached to it and annotated ``serving.kserve.io/s3-endpoint`` (moto as pods
    reach it). Set it as ``deploy.service_account``; yields its name."""
    import base64
    from urllib.parse import urlsplit

    from lmops import kube

    client = kube_cluster.client()
    data = {k: base64.b64encode(b"testing").decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    ann = {"serving.kserve.io/s3-endpoint": urlsplit(moto_for_pods).netloc, "serving.kserve.io/s3-usehttps": "0",
           "serving.kserve.io/s3-region": "us-east-1"}
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kserve-s3", "namespace": kube_namespace,
                                                                    "annotations": ann}, "data": data}, client=client)
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kserve-s3", "namespace": kube_namespace},
                "secrets": [{"name": "kserve-s3"}]}, client=client)
    return "kserve-s3"


@pytest.fixture
def pod_s3_env(s3, moto_for_pods) -> dict[str, str]:
    """kuberay.env for a RayJob whose pods use the test's moto S3 (as pods reach it)."""
    return {"LMOPS_S3_ENDPOINT_URL": moto_for_pods, "AWS_ENDPOINT_URL_S3": moto_for_pods}
