"""kfp's ``DockerRunner`` task handler, fixed so that a failed task fails (every change to kfp is here).

kfp 2.17 (``kfp/local/docker_task_handler.py``, 2.17.3 read) runs each task container with ``auto_remove=True``,
streams its logs, then calls ``container.wait()``; when the container is already gone it catches
``docker.errors.NotFound`` and returns exit code 0. Against podman's Docker-compatible API the container
is often removed before kfp reads its exit code, so a task that raised was reported SUCCESS (twice in two
runs, measured), or kfp crashed on an APIError 500. This handler runs the container without auto-remove,
streams its logs, waits for the real exit code, and only then removes it (also when interrupted).

It also takes, per task, extra run arguments (``extra_for``): the image to use instead of the component's
(kfp's ``DockerRunner`` refuses ``volumes`` among its own arguments), extra mounts, and what one task needs
and the others must not get (the deploy task alone gets the engine's API socket, to start the model server
as a container of its own).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from kfp.local import docker_task_handler, status

from lmops.errors import LmopsError

KFP_SERIES = "2.17."  # the releases whose handler this replaces (2.17.3 in the lock; tests/containers checks it)

# (task function name) -> extra docker-SDK run arguments for that task's container
ExtraFor = Callable[[str], dict[str, Any]]


def task_function(command: list[str]) -> str:
    """The component function a kfp task runs (``--function_to_execute NAME`` in its command)."""
    for i, w in enumerate(command):
        if w == "--function_to_execute" and i + 1 < len(command):
            return command[i + 1]
    return ""


class ExitCodeDockerTaskHandler(docker_task_handler.DockerTaskHandler):
    """kfp's DockerTaskHandler with the exit code read before the container is removed."""

    extra_for: ExtraFor = staticmethod(lambda name: {})

    def run(self) -> status.Status:
        import docker

        client = docker.from_env(timeout=600)
        try:
            args = dict(self.runner.container_run_args)
            if self.env_vars:
                args["environment"] = {**args.get("environment", {}), **self.env_vars}
            extra = self.extra_for(task_function(self.full_command))
            volumes = {**self.get_volumes_to_mount(client), **extra.pop("volumes", {})}
            if "environment" in extra:
                args["environment"] = {**args.get("environment", {}), **extra.pop("environment")}
            image = extra.pop("image", self.image)
            args.update(extra)
            code = run_container(client, image, self.full_command, volumes, **args)
        finally:
            client.close()
        return status.Status.SUCCESS if code == 0 else status.Status.FAILURE


def run_container(client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any) -> int:
    """Run, stream the logs, return the exit code, remove. Never pulls: the image must be local."""
    import docker

    image = docker_task_handler.add_latest_tag_if_not_present(image)
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise LmopsError(f"image {image} is not in the container engine: build it with `make images`") from None
    run_args.pop("auto_remove", None)
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, **run_args)
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)  # also stops it when we got here through Ctrl-C


@contextlib.contextmanager
def fixed_handler(extra_for: ExtraFor | None = None) -> Iterator[None]:
    """kfp's dispatcher looks ``docker_task_handler.DockerTaskHandler`` up for each task: point it at ours
    for the duration of a run, and put kfp's back afterwards."""
    import kfp

    if not kfp.__version__.startswith(KFP_SERIES) and not os.environ.get("LMOPS_KFP_ANY_VERSION"):
        raise LmopsError(f"kfp {kfp.__version__}: lmops' container runner patches kfp {KFP_SERIES}x's"
                         " DockerRunner; check lmops/pipeline/kfp_docker.py against this version (or set"
                         " LMOPS_KFP_ANY_VERSION=1)")
    original = docker_task_handler.DockerTaskHandler
    handler = type("LmopsDockerTaskHandler", (ExitCodeDockerTaskHandler,),
                   {"extra_for": staticmethod(extra_for or (lambda name: {}))})
    docker_task_handler.DockerTaskHandler = handler
    try:
        yield
    finally:
        docker_task_handler.DockerTaskHandler = original
