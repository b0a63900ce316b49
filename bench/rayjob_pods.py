"""Benchmark: training as a RayJob whose Ray cluster is pods on the node (head + one worker pod, one DDP rank in
each) against the local launcher (the same config, two ranks on a local Ray), in one run; plus the pods' start
overhead and their real peak memory against the requests and limits lmops renders.

    .venv/bin/python bench/rayjob_pods.py [--steps 40]

Figures:
- local launcher: wall seconds of train_stage with a local Ray (2 ranks), the baseline;
- RayJob on pods: submit -> Complete, and the ratio to the baseline;
- pod start overhead: submit -> RayCluster ready (head and worker pods Running and Ready) and ready -> Running
  (the submitter Job's `ray job submit`);
- peak working set (cgroup usage minus inactive file cache, sampled every 0.5 s) and peak usage of the head and
  worker containers, beside their memory request/limit.
Needs the machine's node free (one node per machine) and `make images IMAGE_VARIANTS=cpu` (built here if missing).
"""

from __future__ import annotations

import os
import sys

# bench/ holds operator.py and tokenize.py, which would shadow the stdlib modules of those names (argparse imports
# operator): take this folder off sys.path before anything else is imported
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tiny_tokens: the tests' tiny tokenized corpus

from tiny_tokens import make_tokens_dir  # noqa: E402

from lmops import kube, storage  # noqa: E402
from lmops.cluster import control_plane, node, node_images, node_network  # noqa: E402

HEAD_MEMORY, WORKER_MEMORY = "4Gi", "2Gi"


def train_cfg(steps: int, ns: str, env: dict[str, str]):
    from lmops.config import config_from_dict

    return config_from_dict({
        "cache_dir": None,
        "kuberay": {"namespace": ns, "gpus_per_worker": 0, "head_cpu": "1", "head_cpu_request": "500m",
                    "worker_cpu": "1", "worker_cpu_request": "500m", "head_memory": HEAD_MEMORY,
                    "worker_memory": WORKER_MEMORY, "head_ranks": 1, "env_from_secrets": ["s3-creds"], "env": env,
                    "poll_s": 0.5, "timeout_s": 1800, "ttl_seconds_after_finished": 60},
        "train": {"num_workers": 2, "max_steps": steps, "micro_batch_size": 4, "block_size": 64, "eval_every": steps,
                  "eval_batches": 2, "log_every": 10, "checkpoint_every": steps, "warmup_steps": 2,
                  "resources_per_worker": {"CPU": 1}}})


class MemorySampler(threading.Thread):
    """Peak memory of the Ray containers of one namespace, from their cgroups (v1) on this machine."""

    def __init__(self, folder: Path, client, ns: str):
        super().__init__(daemon=True)
        self.folder, self.client, self.ns = folder, client, ns
        self.peak: dict[str, dict[str, int]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.sample()
            except (OSError, kube.KubeError, ValueError):
                pass

    def sample(self) -> None:
        pods, _ = kube.list_objects("v1", "Pod", self.ns, client=self.client)
        pids = {}
        for line in node.ctr(node.socket_path(self.folder), "task", "ls", check=False).stdout.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 2 and cols[1].isdigit():
                pids[cols[0]] = int(cols[1])
        for pod in pods:
            role = (pod["metadata"].get("labels") or {}).get("ray.io/node-type")
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                cid = (cs.get("containerID") or "").removeprefix("containerd://")
                if not role or cid not in pids:
                    continue
                cgroup = next(line.split(":", 2)[2] for line in Path(f"/proc/{pids[cid]}/cgroup").read_text().splitlines()
                              if ":memory:" in line)
                if cid not in cgroup:  # the container ended and its pid went to another process
                    continue
                base = Path("/sys/fs/cgroup/memory") / cgroup.lstrip("/")
                stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
                usage = int((base / "memory.usage_in_bytes").read_text())
                working = usage - int(stat.get("total_inactive_file", 0))
                peak = self.peak.setdefault(role, {"working_set": 0, "max_usage": 0})
                peak["working_set"] = max(peak["working_set"], working)
                peak["max_usage"] = max(peak["max_usage"], int((base / "memory.max_usage_in_bytes").read_text()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()

    import os
    import socket

    from lmops.images import build
    from lmops.images.engine import detect
    from lmops.train.rayjob import train_on_kuberay
    from lmops.train.stage import train_stage

    with tempfile.TemporaryDirectory(prefix="lmops-bench-rayjob-") as tmp:
        tmp_path = Path(tmp)
        tokens = make_tokens_dir(tmp_path / "tokens")
        port = 0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        exe = Path(sys.executable).parent / "moto_server"
        moto = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        procs = [moto]
        folder = tmp_path / "cluster"
        try:
            os.environ.update({"LMOPS_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                               "RAY_AUTH_MODE": "disabled"})
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            time.sleep(3)
            storage.s3_client().create_bucket(Bucket="bench")
            storage.upload_dir(tokens, "s3://bench/tokens")

            # the baseline: the local launcher, two ranks on a local Ray
            import ray

            from lmops.train.ray_train import ensure_ray

            ensure_ray(num_cpus=2)
            cfg = train_cfg(args.steps, "default", {})
            t0 = time.monotonic()
            train_stage(cfg, tokens, tmp_path / "local-ckpt", cache_dir=None, log=lambda s: None)
            local_s = time.monotonic() - t0
            ray.shutdown()
            print(f"local launcher (2 ranks, local Ray), {args.steps} steps: {local_s:.1f} s")

            cluster = control_plane.up(folder, echo=lambda line: None)
            client = cluster.client()
            engine = detect()
            built = build.build("cpu", engine=engine, log=lambda line: None)
            loaded = node_images.load(folder, built.ref, engine, log=lambda line: None)
            print(f"image {built.ref}: {loaded.line()}")
            relay = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind={node_network.NODE_IP},fork,reuseaddr",
                                      f"TCP:127.0.0.1:{port}"], start_new_session=True)
            procs.append(relay)
            url = f"http://{node_network.NODE_IP}:{port}"
            import base64

            kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": "default"},
                        "data": {k: base64.b64encode(b"testing").decode()
                                 for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}, client=client)
            cfg = train_cfg(args.steps, "default", {"LMOPS_S3_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url})
            sampler = MemorySampler(folder, client, "default")
            sampler.start()
            marks: dict[str, float] = {}
            t0 = time.monotonic()

            def log(line: str) -> None:
                for state in ("Initializing", "Running", "Complete"):
                    if f"-> {state}" in line:
                        marks.setdefault(state, time.monotonic() - t0)

            train_on_kuberay(cfg, "s3://bench/tokens", "s3://bench/ckpt", name="bench", log=log, client=client)
            pods_s = time.monotonic() - t0
            sampler.sample()
            sampler.stop.set()
            ready = marks.get("Running", float("nan"))
            print(f"RayJob on pods (head + 1 worker pod, 1 rank each), {args.steps} steps: {pods_s:.1f} s"
                  f" = {pods_s / local_s:.2f}x the local launcher")
            print(f"  submit -> cluster ready and submitter created (Running): {ready:.1f} s;"
                  f" Running -> Complete: {pods_s - ready:.1f} s")
            limits = {"head": HEAD_MEMORY, "worker": WORKER_MEMORY}
            for role, peak in sorted(sampler.peak.items()):
                print(f"  {role} container: peak working set {peak['working_set'] / 2**20:.0f} MiB, peak usage"
                      f" (with page cache) {peak['max_usage'] / 2**20:.0f} MiB; request = limit {limits[role]}")
        finally:
            for proc in procs:
                proc.terminate()
            if folder.exists():
                control_plane.down(folder, echo=lambda line: None)


if __name__ == "__main__":
    main()
