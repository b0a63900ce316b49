"""Benchmark: the node of `lmops cluster` -- build, start, image load, pod start, helm install -- each beside a
plain baseline measured in the same run.

    .venv/bin/python bench/node.py [--repeats 5] [--no-image]

- cold build of the six binaries: the seconds the cached build recorded (BUILD_SECONDS; `make k8s-binaries`
  on a fresh machine), not rebuilt here;
- `cluster up` to a Ready node, against the control plane alone (--no-node);
- a tiny pod (busybox) and an lmops-image pod from create to Running, against `podman run` of the same image;
- `lmops images load` (save + import), and the skip when the node has the image;
- `helm install helm/lmops` to a Ready operator pod.
Needs the machine's node free (one node per machine): stop a running `lmops cluster` first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # node_pods: the busybox image and pod helpers of the tests

from node_pods import BB, busybox_pod, load_busybox, wait_phase  # noqa: E402

from lmops import kube  # noqa: E402
from lmops.cluster import binaries, node, node_images  # noqa: E402
from lmops.cluster import control_plane as cp  # noqa: E402


def timed(fn) -> tuple[float, object]:
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def pod_to_running(client, pod: dict, namespace: str) -> float:
    pod = {**pod, "metadata": {**pod["metadata"], "namespace": namespace}}
    t0 = time.monotonic()
    kube.apply(pod, client=client)
    wait_phase(client, pod["metadata"]["name"], namespace, ("Running",), timeout_s=120)
    seconds = time.monotonic() - t0
    kube.delete("v1", "Pod", pod["metadata"]["name"], namespace, client=client)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-image", action="store_true", help="skip what needs the lmops image (load, pod, helm)")
    args = p.parse_args()
    if node.owner() is not None:
        sys.exit(f"a node runs on this machine ({node.owner()}): stop it first (lmops cluster down --folder ...)")
    bins = binaries.ensure()
    recorded = (binaries.build_dir() / "BUILD_SECONDS")
    print(f"cold build of {', '.join(binaries.BUILT)}: "
          f"{recorded.read_text().strip() + ' s (recorded by the build)' if recorded.exists() else 'not recorded'}")
    del bins
    quiet = lambda line: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="lmops-bench-node-") as tmp:
        alone, _ = timed(lambda: cp.up(Path(tmp) / "alone", with_node=False, echo=quiet))
        cp.down(Path(tmp) / "alone", echo=quiet)
        folder = Path(tmp) / "node"
        lines: list[str] = []
        total, cluster = timed(lambda: cp.up(folder, echo=lines.append))
        node_line = next((x for x in lines if "Ready at" in x), "")
        node_s = node_line.split("(")[1].split("s after")[0] if "s after" in node_line else "?"
        print(f"cluster up: control plane alone {alone:.1f}s; with the node {total:.1f}s (x{total / alone:.2f}; "
              f"the node Ready {node_s}s after its start, beside the CRDs' installation)")
        try:
            client = cluster.client()
            load_busybox(cluster)
            ns = "default"
            tiny = [pod_to_running(client, busybox_pod(f"tiny-{i}", f"exec {BB} sleep 600"), ns)
                    for i in range(args.repeats)]
            print(f"tiny pod create -> Running: median {statistics.median(tiny):.2f}s over {len(tiny)}")
            if not args.no_image:
                bench_image(cluster, folder, client, ns, args.repeats)
        finally:
            down, _ = timed(lambda: cp.down(folder, echo=quiet))
            print(f"cluster down (node included, nothing left): {down:.1f}s")


def bench_image(cluster, folder: Path, client, ns: str, repeats: int) -> None:
    from lmops.images.build import image_for_run
    from lmops.images.engine import detect

    engine = detect()
    ref = image_for_run("cpu", engine=engine)
    load, loaded = timed(lambda: node_images.load(folder, ref, engine, log=lambda line: None))
    skip, _ = timed(lambda: node_images.load(folder, ref, engine, log=lambda line: None))
    print(f"images load {ref}: {load:.1f}s ({'skipped' if loaded.skipped else 'save + import'}); again (the node "
          f"has it): {skip:.2f}s")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lmops"},
           "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "main", "image": ref, "imagePullPolicy": "Never", "command": ["sleep", "600"],
                                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                        "capabilities": {"drop": ["ALL"]}}}]}}
    pods, runs = [], []
    for i in range(repeats):
        pods.append(pod_to_running(client, {**pod, "metadata": {"name": f"lmops-{i}"}}, ns))
        t, _ = timed(lambda: engine.run("run", "--rm", "--entrypoint", "true", ref, timeout=120))
        runs.append(t)
    print(f"lmops-image pod create -> Running: median {statistics.median(pods):.2f}s; `{engine.name} run --rm` of the "
          f"same image: {statistics.median(runs):.2f}s (x{statistics.median(pods) / statistics.median(runs):.2f})")
    import helm_python as helm

    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lmops-bench"}}, client=client)
    kube.wait_for("v1", "ServiceAccount", "default", "lmops-bench", lambda sa: sa and sa.get("secrets"), timeout_s=60,
                  client=client)
    cfg = helm.Config(kubeconfig_path=cluster.kubeconfig, namespace="lmops-bench")
    t, _ = timed(lambda: cfg.install(str(REPO / "helm" / "lmops"), "lmops", {"webhook": {"enabled": False}},
                                     namespace="lmops-bench", wait="watcher", timeout=300))
    print(f"helm install helm/lmops to a Ready operator pod: {t:.1f}s")


if __name__ == "__main__":
    main()
