"""Benchmark: the InferenceService predictor as a pod of the lmops image on `lmops cluster` (KServe stand-in).

    flock /tmp/lmops-node.lock .venv/bin/python bench/predictor_pod.py [--model DIR] [--rounds 3] [--seconds 30]

Starts its own control plane and node (the machine's one node: run it under the node lock), builds and loads
the lmops image (cached by its build key), a moto S3 server that pods reach through a relay on the node's
address, and one InferenceService whose model KServe's storage initializer fetches from S3.
1. Memory: the predictor container's peak memory (its cgroup's max_usage_in_bytes, reset after start-up)
   while 16 concurrent clients send completions for --seconds, against the requests and limits lmops
   renders (deploy.resources.memory); the idle figure after start-up is the baseline.
2. Rollback, before and after issue 26: from a 20% canary, (before) apply the stable spec again -- what the
   operator did: a new revision of the stable version, Ready after a cold start -- against (after) KServe's
   rollback, ``canaryTrafficPercent: 0``: all traffic on the rolled-out revision. Timed from the apply to the
   InferenceService's status showing 100% of the traffic on a ready revision of the stable version; server
   starts = revisions (Deployments, pods) the rollback created.
Default model: the serving tests' tiny Llama (2 layers); --model serves a real model directory instead.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]  # bench/tokenize.py shadows
sys.path[:0] = [os.path.join(os.path.dirname(_HERE), "tests", "serve")]

import argparse  # noqa: E402
import base64  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import requests  # noqa: E402

from lmops import kube, storage  # noqa: E402
from lmops.cluster import pod_relay  # noqa: E402
from lmops.cluster.node_network import NODE_IP  # noqa: E402
from lmops.config import DeployConfig, ServeConfig  # noqa: E402
from lmops.operator.local import wait_until  # noqa: E402
from lmops.processes import free_port  # noqa: E402
from lmops.serve.inference_service import render_inference_service  # noqa: E402

ISVC = ("serving.kserve.io/v1beta1", "InferenceService")
NS, NAME = "bench", "lm"


def wait(what: str, fn, timeout: float, interval: float = 0.05):
    return wait_until(fn, timeout, interval, what)


def isvc(uri: str, percent: int | None = None, max_new_tokens: int = 64) -> dict:
    cfg = DeployConfig(name=NAME, namespace=NS, storage_uri=uri, service_account="kserve-s3",
                       canary_traffic_percent=percent, resources={"cpu": "500m"})
    return render_inference_service(cfg, ServeConfig(max_new_tokens=max_new_tokens), uri)


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def status(client) -> dict:
    return (kube.get(*ISVC, NAME, NS, client=client) or {}).get("status") or {}


def all_traffic_on(client, revision: str | None = None) -> str | None:
    """The revision with 100% of the traffic, ready (``revision``: that one), else None."""
    st = status(client)
    ready = next((c["status"] for c in st.get("conditions") or [] if c["type"] == "Ready"), None)
    traffic = (st.get("components") or {}).get("predictor", {}).get("traffic") or []
    if ready == "True" and len(traffic) == 1 and traffic[0]["percent"] == 100:
        name = traffic[0]["revisionName"]
        return name if revision in (None, name) else None
    return None


def created(client) -> int:
    return int(status(client)["components"]["predictor"]["latestCreatedRevision"].rsplit("-", 1)[1])


def predictor_cgroup() -> Path:
    """The memory cgroup of the predictor container's `lmops serve` (cgroups v1 on this node)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmd and b"/mnt/models" in cmd and any(c.endswith(b"lmops") for c in cmd[:2]):
            line = next(x for x in (proc / "cgroup").read_text().splitlines() if ":memory:" in x)
            return Path("/sys/fs/cgroup/memory") / line.split(":", 2)[2].lstrip("/")
    raise SystemExit("no predictor process found")


def load(url: str, clients: int, seconds: float) -> tuple[int, int]:
    done, errors = [0], [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client():
        s = requests.Session()
        while time.monotonic() < stop:
            r = s.post(f"{url}/openai/v1/completions", json={"model": NAME, "prompt": "def add(a, b):",
                                                             "max_tokens": 16}, timeout=120)
            with lock:
                done[0] += 1
                errors[0] += r.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0], errors[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a model directory to serve (default: a tiny random Llama)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    from lmops.cluster import control_plane, node_images
    from lmops.images.build import build
    from lmops.images.engine import detect

    root = Path(tempfile.mkdtemp(prefix="bench-predictor-"))
    t = time.monotonic()
    engine = detect(install=True)
    built = build("cpu", engine=engine, log=lambda line: None)
    print(f"image: {built.line()} ({time.monotonic() - t:.0f}s)", flush=True)
    cluster = control_plane.up(root / "cluster", echo=lambda line: None)
    procs = []
    try:
        t = time.monotonic()
        print(f"node image: {node_images.load(root / 'cluster', built.ref, engine, log=lambda line: None).line()} "
              f"({time.monotonic() - t:.0f}s)", flush=True)
        client = cluster.client()
        port = free_port()
        exe = shutil.which("moto_server", path=os.path.dirname(sys.executable))
        procs.append(subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        os.environ.update({"LMOPS_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
        wait("moto", lambda: _up(f"http://127.0.0.1:{port}"), 30, 0.2)
        relay, _ = pod_relay.start(f"http://127.0.0.1:{port}")
        procs.append(relay)
        storage.s3_client().create_bucket(Bucket="bench")
        model = Path(args.model) if args.model else None
        if model is None:
            from tiny_model import make_model_dir

            model = make_model_dir(root / "tiny", layers=2)
        storage.upload_dir(model, "s3://bench/model")
        uri = "s3://bench/model"
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}, client=client)
        kube.wait_for("v1", "ServiceAccount", "default", NS, lambda sa: sa and sa.get("secrets"), timeout_s=60, client=client)
        data = {k: base64.b64encode(b"testing").decode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        ann = {"serving.kserve.io/s3-endpoint": f"{NODE_IP}:{port}", "serving.kserve.io/s3-usehttps": "0",
               "serving.kserve.io/s3-region": "us-east-1"}
        kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kserve-s3", "namespace": NS,
                                                                        "annotations": ann}, "data": data}, client=client)
        kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kserve-s3", "namespace": NS},
                    "secrets": [{"name": "kserve-s3"}]}, client=client)

        t = time.monotonic()
        stable_spec = isvc(uri)
        kube.apply(stable_spec, client=client)
        stable = wait("first revision Ready", lambda: all_traffic_on(client), 300, 0.2)
        print(f"apply -> Ready (first revision: pod, storage initializer, model load): {time.monotonic() - t:.1f}s",
              flush=True)

        # 1. memory at peak under 16 clients against what is rendered
        cg = predictor_cgroup()
        idle = int((cg / "memory.usage_in_bytes").read_text())
        (cg / "memory.max_usage_in_bytes").write_text("0")
        url = status(client)["url"]
        n, errors = load(url, 16, args.seconds)
        peak = int((cg / "memory.max_usage_in_bytes").read_text())
        limit = int((cg / "memory.limit_in_bytes").read_text())
        rendered = stable_spec["spec"]["predictor"]["containers"][0]["resources"]
        print(f"predictor memory: idle {idle / 2**20:.0f} MiB, peak with 16 clients {peak / 2**20:.0f} MiB "
              f"({n} completions in {args.seconds:.0f}s, {errors} errors); rendered request/limit "
              f"{rendered['requests']['memory']}/{rendered['limits']['memory']} (cgroup limit {limit / 2**20:.0f} MiB); "
              f"peak/limit {peak / limit:.2f}, peak/idle x{peak / idle:.2f}", flush=True)

        # 2. rollback: re-apply the stable spec (before) vs canaryTrafficPercent 0 (after)
        before, after, starts_before, starts_after = [], [], [], []
        for i in range(args.rounds):
            for how in ("after", "before"):
                tokens = 40 + 2 * i + (how == "before")  # a new spec each time: a new revision
                kube.apply(isvc(uri, 20, max_new_tokens=tokens), client=client)
                wait("canary in the traffic", lambda: len(status(client)["components"]["predictor"].get("traffic") or []) == 2,
                     300, 0.2)
                n0, t0 = created(client), time.monotonic()
                if how == "after":
                    kube.apply(isvc(uri, 0, max_new_tokens=tokens), client=client)
                    wait("traffic back", lambda: all_traffic_on(client, stable), 300)
                    after.append(time.monotonic() - t0)
                    starts_after.append(created(client) - n0)
                else:
                    kube.apply(stable_spec, client=client)
                    stable = wait("traffic on a new stable revision",
                                  lambda: (lambda r: r if r and r != stable else None)(all_traffic_on(client)), 300)
                    before.append(time.monotonic() - t0)
                    starts_before.append(created(client) - n0)
            print(f"  round {i + 1}: re-apply stable {before[-1]:.2f}s ({starts_before[-1]} start); "
                  f"canaryTrafficPercent 0 {after[-1]:.2f}s ({starts_after[-1]} starts)", flush=True)
        b, a = statistics.median(before), statistics.median(after)
        print(f"\nrollback -> all traffic on stable: before (stable spec re-applied) median {b:.2f}s, "
              f"{statistics.mean(starts_before):.0f} server start per rollback; after (canaryTrafficPercent 0) median "
              f"{a:.2f}s, {statistics.mean(starts_after):.0f} server starts; after/before x{a / b:.3f}")
    finally:
        for p in procs:
            pod_relay.stop(p)
        control_plane.down(root / "cluster", echo=lambda line: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
