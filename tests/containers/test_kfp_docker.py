"""kfp's DockerRunner through podman's API with lmops' task handler (lmops.pipeline.kfp_docker): a task that
raises fails the run (kfp 2.17's own handler reported such tasks SUCCESS against podman), and tasks run as
the image's non-root user on a read-only root file system."""

# (no `from __future__ import annotations` here: kfp reads the components' annotations as types)
import inspect
import os

import kfp
import pytest
from kfp import dsl, local
from kfp.local import docker_task_handler

from lmops.config import load_config
from lmops.images.build import image_for_run
from lmops.pipeline.containers import container_runner
from lmops.pipeline.kfp_docker import KFP_SERIES, task_function


def test_the_patched_kfp_is_the_one_locked():
    assert kfp.__version__.startswith(KFP_SERIES)
    # the reason for the patch is still in kfp: auto-remove, and "container gone" read as success
    source = inspect.getsource(docker_task_handler.run_docker_container)
    assert "auto_remove=True" in source and "return 0" in source


def test_task_function_reads_kfps_command():
    cmd = ["sh", "-c", "...", "--executor_input", "{}", "--function_to_execute", "deploy"]
    assert task_function(cmd) == "deploy" and task_function(["sh"]) == ""


@pytest.fixture
def runner(engine, lmops_image, tmp_path, monkeypatch):
    tmp_path.chmod(0o755)  # pytest makes it 0700; the containers' user (UID 1000) reads it
    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", [f"cache_dir={tmp_path / 'cache'}", f"workdir={tmp_path / 'runs'}"])
    image = image_for_run("cpu", cfg.image, engine)
    root = tmp_path / "kfp"
    with container_runner(cfg, engine=engine, image=image, state=tmp_path / "state", run_root=root, sources=[],
                          env={}) as docker_runner:
        local.init(runner=docker_runner, pipeline_root=str(root), raise_on_error=True)
        yield image


def _components(image: str):
    @dsl.component(base_image=image, install_kfp_package=False)
    def whoami() -> str:
        import json
        import os

        try:
            open("/opt/lmops/probe", "w")
            read_only = False
        except OSError:
            read_only = True
        return json.dumps({"uid": os.getuid(), "read_only": read_only})

    @dsl.component(base_image=image, install_kfp_package=False)
    def fails(message: str):
        raise RuntimeError(message)

    return whoami, fails


def test_a_failing_task_fails_the_run_and_tasks_run_non_root_read_only(runner, engine):
    import json

    whoami, fails = _components(runner)
    got = json.loads(whoami().output)
    assert got["uid"] != 0 and got["read_only"] is True
    if os.geteuid() == 0:
        assert got["uid"] == 1000  # the image's user
    with pytest.raises(RuntimeError, match="FAILURE"):
        fails(message="this task raised")
    # nothing left behind: the handler removes each task's container after reading its exit code
    left = engine.run("ps", "-a", "--filter", "label=dev.lmops.run=kfp", "--format", "{{.Names}}").stdout.split()
    assert left == []
