"""`lmops cluster` benchmark: the binaries' cold build (as recorded by the build), `cluster up` to ready,
and the time from applying a RayJob / an InferenceService to the stand-in's status showing it
running / Ready.

    python bench/cluster.py [--folder DIR]

Figures (targets from the cluster issue):
- cold build of kube-apiserver + kube-controller-manager        5-11 min on 2 cores (read from the cache)
- `cluster up` to ready (binaries built, CRDs parsed once)      target <= 15 s
- RayJob applied -> jobStatus RUNNING (a trivial entrypoint; the head pod of the lmops image started first)
- InferenceService applied -> Ready (a 1-layer tiny model)

Wall clock on 2 shared cores: other people's work counts too; the figures vary run to run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", help="the control plane's folder (default: a temporary one)")
    args = p.parse_args()

    from lmops import kube
    from lmops.cluster import binaries, control_plane

    bins = binaries.ensure()
    recorded = bins.kube_apiserver.parent.parent / "BUILD_SECONDS"
    build = f"{int(recorded.read_text()) / 60:.1f} min" if recorded.is_file() else "not recorded (copied cache)"
    print(f"cold build (recorded): {build}")

    with tempfile.TemporaryDirectory(prefix="lmops-bench-cluster-") as tmp:
        folder = Path(args.folder or Path(tmp) / "cluster")
        t0 = time.monotonic()
        cluster = control_plane.up(folder, echo=lambda line: None)
        up_s = time.monotonic() - t0
        print(f"cluster up -> ready: {up_s:.1f} s (target <= 15 s)")
        try:
            client = cluster.client()
            # the KubeRay stand-in runs the Ray cluster as pods of the lmops image: a head pod alone here
            from lmops.cluster import node_images
            from lmops.config import config_from_dict
            from lmops.images import build
            from lmops.images.engine import detect
            from lmops.train.rayjob import render_rayjob

            engine = detect()
            node_images.load(folder, build.build("cpu", engine=engine, log=lambda line: None).ref, engine,
                             log=lambda line: None)
            cfg = config_from_dict({"kuberay": {"gpus_per_worker": 0, "head_cpu": "1", "head_memory": "2Gi",
                                                "worker_cpu": "1", "worker_memory": "2Gi"}})
            job = render_rayjob(cfg, name="bench", tokens_uri="s3://b/t", checkpoint_uri="s3://b/c")
            job["spec"]["entrypoint"] = "sleep 5"
            job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=0, minReplicas=0)
            t0 = time.monotonic()
            kube.apply(job, client=client)
            kube.wait_for("ray.io/v1", "RayJob", "bench", "default",
                          lambda o: ((o or {}).get("status") or {}).get("jobStatus") == "RUNNING", timeout_s=300,
                          poll_s=0.05, client=client)
            print(f"RayJob applied -> RUNNING (head pod started, ready, job submitted): {time.monotonic() - t0:.2f} s")

            from tiny_model import make_model_dir

            model = make_model_dir(Path(tmp) / "model", layers=1)
            isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                    "metadata": {"name": "bench", "namespace": "default"},
                    "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": str(model)}}}}
            t0 = time.monotonic()
            kube.apply(isvc, client=client)
            kube.wait_for("serving.kserve.io/v1beta1", "InferenceService", "bench", "default",
                          lambda o: any(c.get("type") == "Ready" and c.get("status") == "True"
                                        for c in ((o or {}).get("status") or {}).get("conditions") or []),
                          timeout_s=300, poll_s=0.1, client=client)
            print(f"InferenceService applied -> Ready: {time.monotonic() - t0:.1f} s")
        finally:
            control_plane.down(folder, echo=lambda line: None)


if __name__ == "__main__":
    main()
