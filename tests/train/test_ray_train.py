"""Ray Train: DDP with 2 workers, a killed worker resumes from its checkpoint, a re-run resumes from
the latest complete checkpoint. Each fit() costs tens of seconds here, so the tests are few."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lmops.config import load_config
from lmops.manifest import ManifestError
from lmops.train import checkpoint as ckpt
from lmops.train.ray_resources import RayResourceError, check_resources
from lmops.train.stage import train_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    from tiny_tokens import make_tokens_dir

    return make_tokens_dir(tmp_path_factory.mktemp("tok") / "tokens", vocab_size=512, max_chars=200_000)


def _cfg(tmp_path, *overrides):
    return load_config("micro", [f"workdir={tmp_path}", "cache_dir=null", "train.micro_batch_size=4",
                                "train.log_every=10", "train.eval_every=1000", "train.eval_batches=2", *overrides])


def _train_worker_pids() -> list[int]:
    """Train workers of this session's Ray only (other Ray instances may run on the same machine)."""
    import psutil
    from ray._private import worker

    raylet = worker._global_node.all_processes["raylet"][0].process.pid
    return [p.pid for p in psutil.Process(raylet).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())]


def _complete_checkpoints(run_root: Path) -> list[int]:
    steps = []
    for marker in run_root.glob("lmops-train-*/checkpoint_*/checkpoint.json"):
        if ckpt.is_complete(str(marker.parent)):
            steps.append(json.loads(marker.read_text())["step"])
    return sorted(steps)


def test_two_workers_and_a_killed_worker_resumes_from_its_checkpoint(ray_runtime, tokens, tmp_path):
    cfg = _cfg(tmp_path, "train.num_workers=2", "train.max_steps=300", "train.checkpoint_every=25",
               "train.keep_checkpoints=20", "train.max_failures=2")
    result: dict = {}

    def train() -> None:
        try:
            result["res"] = train_stage(cfg, tokens, tmp_path / "ckpt")
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            result["error"] = e

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    deadline = time.time() + 240
    while not _complete_checkpoints(tmp_path / "ray") and time.time() < deadline:
        time.sleep(0.1)
    steps_before = _complete_checkpoints(tmp_path / "ray")
    assert steps_before, "no checkpoint appeared"
    victims = _train_worker_pids()
    assert len(victims) == 2, victims
    os.kill(victims[-1], signal.SIGKILL)  # one DDP rank dies mid-run
    thread.join(300)  # within the test's timeout, so that a slow run fails here, saying so
    assert not thread.is_alive(), "the run did not finish within 300 s of its worker's death"
    assert "error" not in result, result.get("error")
    res = result["res"]
    metrics = res.manifest.metrics
    assert metrics["steps"] == 300 and metrics["num_workers"] == 2
    resumed = metrics["resumed_from"]
    assert len(resumed) == 1 and resumed[0] >= steps_before[0] > 0  # from the checkpoint, not step 0
    assert resumed[0] < 300
    assert metrics["final_loss"] < metrics["first_loss"]

    from transformers import AutoModelForCausalLM, AutoTokenizer  # loads without lmops

    model = AutoModelForCausalLM.from_pretrained(res.path)
    tok = AutoTokenizer.from_pretrained(res.path)
    assert model.config.vocab_size == len(tok)
    assert (res.path / "loss_curve.png").stat().st_size > 1000


def test_rerun_resumes_from_latest_complete_checkpoint(ray_runtime, mlflow_server, tokens, tmp_path):
    cfg = _cfg(tmp_path, "train.max_steps=40", "train.checkpoint_every=10", "train.keep_checkpoints=5",
               f"train.mlflow_tracking_uri={mlflow_server}", "train.experiment=test-train-tracking")
    first = train_stage(cfg, tokens, tmp_path / "ckpt")
    assert first.manifest.metrics["resumed_from"] == []
    _assert_tracked_in_mlflow(mlflow_server, "test-train-tracking", steps=40)
    assert _complete_checkpoints(tmp_path / "ray") == [10, 20, 30, 40]
    # the crash story: the stage output never got published and the newest checkpoint is half-written
    markers = (tmp_path / "ray").glob(f"lmops-train-*/checkpoint_*/{ckpt.MARKER}")
    newest = max(markers, key=lambda p: json.loads(p.read_text())["step"]).parent
    (newest / "optimizer.pt").write_bytes(b"truncated")
    import shutil

    shutil.rmtree(tmp_path / "ckpt")
    again = train_stage(cfg, tokens, tmp_path / "ckpt")
    assert again.manifest.metrics["resumed_from"] == [30]
    assert again.manifest.metrics["steps"] == 40


def test_gpu_request_without_gpus_is_a_clear_error(ray_runtime, tokens, tmp_path):
    cfg = _cfg(tmp_path, "train.use_gpu=true", "train.num_workers=2")
    with pytest.raises(RayResourceError, match=r"use_gpu=true asks for 2 GPU worker\(s\); this machine's Ray has 0"):
        train_stage(cfg, tokens, tmp_path / "ckpt")


def test_more_cpus_than_ray_has_is_a_clear_error_not_a_hang(ray_runtime, tokens, tmp_path):
    # the session's Ray has 2 CPUs: 2 workers x 2 CPUs can never be placed
    cfg = _cfg(tmp_path, "train.resources_per_worker={CPU: 2}", "train.num_workers=2")
    with pytest.raises(RayResourceError, match=r"asks for 4 CPU\(s\) over 2 worker\(s\); this machine's Ray has 2"):
        train_stage(cfg, tokens, tmp_path / "ckpt")


def test_what_a_run_asks_of_ray(tmp_path):
    from lmops.train.ray_resources import needed

    assert needed(_cfg(tmp_path)) == {"CPU": 1}
    assert needed(_cfg(tmp_path, "train.num_workers=4", "train.use_gpu=true", "train.resources_per_worker={CPU: 8}")
                  ) == {"CPU": 32, "GPU": 4}


def test_cpus_another_run_holds_are_waited_for_then_refused_naming_what_holds_them(ray_runtime, tokens, tmp_path):
    from ray.util.placement_group import placement_group, remove_placement_group

    held = placement_group([{"CPU": 2}], name="another-run")  # what another run's worker group holds
    ray_runtime.get(held.ready(), timeout=60)
    try:
        cfg = _cfg(tmp_path, "train.wait_for_resources_s=2")
        started = time.monotonic()
        with pytest.raises(RayResourceError, match=r"need 1 CPU, but this machine's Ray had only 0 CPU free for "
                                                   r"train.wait_for_resources_s=2s; held by: placement group "
                                                   r"another-run \(2 CPU\)"):
            train_stage(cfg, tokens, tmp_path / "ckpt")
        assert time.monotonic() - started < 30
        # freed while a run waits: it goes ahead
        threading.Timer(2, remove_placement_group, [held]).start()
        started = time.monotonic()
        check_resources(_cfg(tmp_path, "train.wait_for_resources_s=60"), local=True, poll_s=0.2)
        assert 1.5 < time.monotonic() - started < 30  # it waited for them, then went ahead
    finally:
        remove_placement_group(held)
    assert ray_runtime.available_resources()["CPU"] == 2


def test_missing_or_corrupt_token_shards(tokens, tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(ManifestError, match="not found"):
        train_stage(cfg, tmp_path / "nope", tmp_path / "ckpt")
    import shutil

    broken = tmp_path / "tokens"
    shutil.copytree(tokens, broken)
    with open(broken / "train.bin", "r+b") as f:
        f.write(b"\xff\xff")
    with pytest.raises(ManifestError, match="train.bin: sha256"):
        train_stage(cfg, broken, tmp_path / "ckpt")


def test_unreachable_s3_checkpoint_store(tokens, tmp_path, monkeypatch):
    monkeypatch.setenv("LMOPS_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from lmops.storage import StorageError

    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        ckpt.latest_complete("s3://bucket/runs/lmops-train-x")


def _assert_tracked_in_mlflow(uri: str, experiment: str, steps: int) -> None:
    """The run the train stage logged: params, the per-step loss curve, the PNG, finished."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert float(run.data.params["train.max_steps"]) == steps and run.data.params["model.preset"] == "tiny"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(10, steps + 1, 10))  # every log line, by step
    assert losses[-1].value < losses[0].value
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "train_metrics.json"} <= artifacts
