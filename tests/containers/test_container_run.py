"""`make run RUNNER=container` on the micro config: every kfp task a container of the lmops image (podman,
non-root, read-only root), the model server a container of its own, the same summary as `make run`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from micro_pipeline import MICRO, write_corpus

from lmops.pipeline import servers
from lmops.pipeline.local import TASKS, run_pipeline


@pytest.fixture(scope="module")
def run(lmops_image, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("container-run")
    root.chmod(0o755)  # pytest makes it 0700; the containers' user (UID 1000) reads the corpus from it
    mp = pytest.MonkeyPatch()
    mp.setenv("LMOPS_STATE_DIR", str(root / "state"))
    mp.chdir(root)
    try:
        corpus = write_corpus(root / "corpus")
        summary = run_pipeline("tiny", [*MICRO, f"cache_dir={root / 'cache'}"], model_name="lm-containers",
                               sources=[str(corpus)], tracking_uri=mlflow_server, runner="container")
        yield root, summary
    finally:
        servers.stop_all()
        mp.undo()


def test_every_stage_runs_in_the_image_and_the_endpoint_serves(run, engine, lmops_image):
    root, s = run
    assert [r["stage"] for r in s["rows"]] == ["config", *TASKS[1:]], s["rows"]
    assert all(r["status"] == "ran" for r in s["rows"]), s["rows"]
    assert {"fp32", "int8", "pruned"} <= set(s["variants"])
    assert s["registered"].startswith("models:/lm-containers/")
    r = requests.post(f"{s['endpoint']}/v1/models/lmops:predict",
                      json={"instances": [{"prompt": "def return", "max_new_tokens": 4}]}, timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["predictions"][0]["text"], str)
    assert isinstance(s["example"]["completion"], str)


def test_the_tasks_wrote_as_a_non_root_user(run):
    root, s = run
    owners = {p.stat().st_uid for p in Path(s["run_dir"]).rglob("executor_output.json")}
    assert owners and 0 not in owners
    if os.geteuid() == 0:
        assert owners == {1000}  # the image's user


def test_the_model_server_is_a_non_root_read_only_container_that_stop_removes(run, engine, lmops_image):
    root, s = run
    rec = servers.running()["serve-lmops"]
    assert rec["kind"] == "container" and rec["url"] == s["endpoint"]
    info = json.loads(engine.run("container", "inspect", rec["container"]).stdout)[0]
    assert info["Config"]["User"] == "1000:1000" and info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["State"]["Running"] is True
    assert servers.stop("serve-lmops")
    assert engine.run("container", "inspect", rec["container"], check=False).returncode != 0
