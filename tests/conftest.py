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
    kube.delete("v1", "Namespace", name, None, client=kube_cluster.client())


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


@pytest.fixture(scope="session")
def lmops_image(kube_cluster) -> str:
    """The lmops cpu image (this tree's sources) on the session's node: built unless an image with the same build
    key exists (make images), then loaded into the node's containerd (lmops images load). Yields its ref."""
    from lmops.cluster import node_images
    from lmops.images import build
    from lmops.images.engine import detect

    echo = lambda line: print(line, file=sys.__stderr__, flush=True)  # noqa: E731 - past pytest's capture
    engine = detect()
    built = build.build("cpu", engine=engine, log=echo)
    echo(built.line())
    echo(node_images.load(Path(kube_cluster.folder), built.ref, engine, log=echo).line())
    return built.ref


@pytest.fixture(scope="session")
def node_relay(kube_cluster):
    """``expose(url) -> url``: a service of this machine on 127.0.0.1 (moto, MLflow) made reachable from pods at
    the node's address (10.244.0.1, same port) by a socat relay, as the node does for the API server."""
    from urllib.parse import urlsplit

    from lmops.cluster import node_network

    relays: dict[int, subprocess.Popen] = {}

    def expose(url: str) -> str:
        parts = urlsplit(url)
        if parts.port not in relays:
            relays[parts.port] = subprocess.Popen(
                ["socat", f"TCP-LISTEN:{parts.port},bind={node_network.NODE_IP},fork,reuseaddr",
                 f"TCP:127.0.0.1:{parts.port}"], stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = time.time() + 10
            while time.time() < deadline:
                with socket.socket() as s:
                    if s.connect_ex((node_network.NODE_IP, parts.port)) == 0:
                        break
                time.sleep(0.1)
        return parts._replace(netloc=f"{node_network.NODE_IP}:{parts.port}").geturl()

    yield expose
    for proc in relays.values():
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def pod_s3_env(s3, moto_endpoint, node_relay) -> dict[str, str]:
    """kuberay.env for a RayJob whose pods use the test's moto S3 (through the node relay)."""
    url = node_relay(moto_endpoint)
    return {"LMOPS_S3_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url}
