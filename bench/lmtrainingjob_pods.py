"""Benchmark: an LMTrainingJob (micro preset, executor kubernetes: a Job per stage and a RayJob for train, pods
of the lmops image on the node, outputs through S3) against the same preset run on this machine by
`lmops pipeline run --runner inprocess --until register` (the local executor's path; `make run` without deploy),
in one run.

    flock /tmp/lmops-node.lock .venv/bin/python -P bench/lmtrainingjob_pods.py [--data-engine ray]
    (-P: bench/operator.py would shadow the standard library's operator module)

``--data-engine ray``: build and tokenize on Ray Data, each a RayJob of its own (a driver-only head and one
data worker pod; the head is train's) instead of a Job; the baseline then runs them on a local Ray too.

Figures: wall seconds of each (LMTrainingJob: apply -> Succeeded) and their ratio; per stage, the overhead of
running it as a pod: Job created -> pod Running (scheduling, the container's start) and Running -> done
(the stage itself, imports included), from the API server's timestamps (1 s resolution).
Needs the machine's node free (one node per machine); builds and loads the cpu image if missing.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "cluster"))

from micro_pipeline import MICRO, write_corpus  # noqa: E402
from ray_pods import SMALL_DATA_WORKERS  # noqa: E402

from lmops import kube, storage  # noqa: E402
from lmops.cluster import control_plane, node_images, pod_relay  # noqa: E402
from lmops.crd import API_VERSION  # noqa: E402

NS = "default"


def ts(s: str | None) -> float | None:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() if s else None


def stage_overheads(client, uid: str) -> list[tuple[str, float | None, float | None]]:
    """(object, created -> pod Running, Running -> done) per stage Job, and the RayJob's submitter."""
    jobs, _ = kube.list_objects("batch/v1", "Job", NS, client=client)
    pods, _ = kube.list_objects("v1", "Pod", NS, client=client)
    out = []
    for job in sorted(jobs, key=lambda j: j["metadata"]["creationTimestamp"]):
        name = job["metadata"]["name"]
        pod = next((p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == name), None)
        cs = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
        state = cs[0].get("state") or {}
        started = ts((state.get("running") or state.get("terminated") or {}).get("startedAt"))
        created, done = ts(job["metadata"]["creationTimestamp"]), ts((job.get("status") or {}).get("completionTime"))
        out.append((name, started - created if started and created else None, done - started if done and started else None))
    return out


def data_engine_overrides(engine: str) -> list[str]:
    """build and tokenize on ``engine``; on ray with the tests' small data RayJob pods."""
    out = [f"{stage}.engine={engine}" for stage in ("build", "tokenize")]
    if engine == "ray":
        out += [f"{stage}.ray.{k}={v}" for stage in ("build", "tokenize") for k, v in SMALL_DATA_WORKERS.items()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-engine", choices=("local", "ray"), default="local")
    args = ap.parse_args()
    data = data_engine_overrides(args.data_engine)

    from lmops.images import build
    from lmops.images.engine import detect
    from lmops.operator.local import start_operator, wait_until
    from lmops.pipeline.local import run_pipeline
    from lmops.registry.local_server import start_mlflow_server, stop_process_group

    with tempfile.TemporaryDirectory(prefix="lmops-bench-lmtj-") as tmp:
        tmp_path = Path(tmp)
        corpus = write_corpus(tmp_path / "corpus")
        moto_port = _free_port()
        moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                 str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        os.environ.update({"LMOPS_S3_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "RAY_AUTH_MODE": "disabled", "LMOPS_STATE_DIR": str(tmp_path / "state")})
        mlflow, url = start_mlflow_server(tmp_path / "mlflow", str(tmp_path / "mlflow" / "artifacts"))
        folder, relays, op = tmp_path / "cluster", [], None
        try:
            time.sleep(2)
            storage.s3_client().create_bucket(Bucket="bench")
            storage.upload_dir(corpus, "s3://bench/corpus")

            # the baseline: the same preset and corpus in this process (the local executor's run)
            os.chdir(tmp_path)
            t0 = time.monotonic()
            run_pipeline("micro", [*MICRO, *data, f"cache_dir={tmp_path / 'cache'}"], model_name="bench-local",
                         sources=[str(corpus)], tracking_uri=url, runner="inprocess", until="register")
            local_s = time.monotonic() - t0
            print(f"local (inprocess, until register), micro, data engine {args.data_engine}: {local_s:.1f} s")

            cluster = control_plane.up(folder, echo=lambda line: None)
            client = cluster.client()
            engine = detect()
            built = build.build("cpu", engine=engine, log=lambda line: None)
            print(f"image {built.ref}: {node_images.load(folder, built.ref, engine, log=lambda line: None).line()}")
            for target in (os.environ["LMOPS_S3_ENDPOINT_URL"], url):
                proc, relayed = pod_relay.start(target)
                relays.append((proc, relayed))
            s3_pods, mlflow_pods = relays[0][1], relays[1][1]
            kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NS},
                        "data": {k: base64.b64encode(b"testing").decode()
                                 for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}, client=client)
            from test_training_jobs import sample

            job = sample(NS, "bench", s3_pods, mlflow_pods, "bench-lm", ["s3://bench/corpus/"])
            job["spec"]["modelName"] = "bench-pods"
            job["spec"]["overrides"].update(dict(o.split("=", 1) for o in data))  # heads: train's (SMALL_PODS)
            op = start_operator(Path(cluster.kubeconfig), NS, mlflow_pods, tmp_path / "op", poll_s=1)
            t0 = time.monotonic()
            kube.apply(job, client=client)
            status = lambda: (kube.get(API_VERSION, "LMTrainingJob", "bench-lm", NS, client=client) or {}).get(  # noqa: E731
                "status") or {}
            wait_until(lambda: status().get("phase") in ("Succeeded", "Failed"), 1800, what="the LMTrainingJob")
            pods_s = time.monotonic() - t0
            if status()["phase"] != "Succeeded":
                raise SystemExit(f"the LMTrainingJob failed: {status().get('message')}")
            print(f"LMTrainingJob on pods (executor kubernetes), micro: {pods_s:.1f} s = {pods_s / local_s:.2f}x local")
            uid = kube.get(API_VERSION, "LMTrainingJob", "bench-lm", NS, client=client)["metadata"]["uid"]
            print("  stage object                      create->Running   Running->done")
            for name, start, run in stage_overheads(client, uid):
                print(f"  {name:<34}{_s(start):>14}{_s(run):>16}")
        finally:
            if op is not None:
                op.stop()
            for proc, _ in relays:
                pod_relay.stop(proc)
            if folder.exists():
                control_plane.down(folder, echo=lambda line: None)
            from lmops.pipeline.servers import stop_all

            stop_all()  # the local run's Ray (its state folder is this bench's)
            stop_process_group(mlflow)
            moto.terminate()


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} s"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
