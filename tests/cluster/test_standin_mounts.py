"""The stand-ins run a pod's process on this machine: its emptyDir mounts become fresh local folders and the
env values and --set paths under them follow, as the kubelet would give the pod writable volumes."""

from __future__ import annotations

from lmops.cluster.standin import local_mounts, relocate
from lmops.config import DeployConfig, ServeConfig
from lmops.serve.inference_service import render_inference_service


def test_predictor_paths_move_to_local_folders(tmp_path):
    pred = render_inference_service(DeployConfig(), ServeConfig(), "models:/lm/1")["spec"]["predictor"]
    (container,) = pred["containers"]
    mounts = local_mounts(container, tmp_path)
    assert mounts == {"/tmp": str(tmp_path / "tmp"), "/var/cache/lmops": str(tmp_path / "cache")}
    assert all((tmp_path / name).is_dir() for name in ("tmp", "cache"))
    env = {e["name"]: relocate(e["value"], mounts) for e in container["env"]}
    assert env["HOME"] == str(tmp_path / "cache") and env["HF_HOME"] == str(tmp_path / "cache" / "huggingface")
    assert relocate("/tmpfile", mounts) == "/tmpfile" and relocate("models:/lm/1", mounts) == "models:/lm/1"
