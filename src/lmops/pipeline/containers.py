"""``lmops pipeline run --runner container`` (``make run RUNNER=container``): every kfp task in the lmops image.

kfp's ``DockerRunner`` (with lmops' fixed task handler, ``kfp_docker``) runs each task as a container of
the image, against docker or a ``podman system service`` lmops starts for the run (``lmops.images.api``).
The containers run as a non-root user with a read-only root file system (tmpfs on /tmp) and the host's
network, so they reach the run's MLflow server on 127.0.0.1. What they read and write on the host is
mounted at the same path: kfp's run folder (by kfp), the state folder (server records), lmops' stage cache
and the config's workdir (Ray Train's storage) read-write; the working directory (the sample corpus,
relative paths) and local sources read-only. Run as root, lmops hands the folders the containers write to
the image's user (UID 1000); run as another user, the containers run as that user.

- Ray: each task that trains starts a Ray of its own inside its container (the host's Ray runtime would
  run the workers on the host, outside the image).
- Deploy (``deploy.target=local``): the model server must outlive the deploy task's container, so it is
  a detached container of the same image (non-root, read-only), which the deploy task starts through the
  engine's API: that task alone gets the API socket mounted (as a cluster's deploy step gets the rights to
  create an InferenceService). ``make stop`` removes it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmops.config import Config
from lmops.images.engine import Engine

# the image's user (components/Dockerfile): containers run as this UID when lmops runs as root
IMAGE_UID = 1000
SOCKET_IN_CONTAINER = "/run/lmops/engine.sock"
RUN_LABEL = "dev.lmops.run"


def task_user() -> tuple[int, int]:
    """Who the task containers run as: the image's user when we are root (the folders they write are
    handed to it), else the caller's own UID (non-root either way), so the files stay the caller's."""
    if os.geteuid() == 0:
        return IMAGE_UID, IMAGE_UID
    return os.geteuid(), os.getegid()


def hand_over(paths: list[Path], uid: int, gid: int) -> None:
    """Make the folders the containers write owned by their user (as root only; nothing to do otherwise)."""
    if os.geteuid() != 0:
        return
    for top in paths:
        top.mkdir(parents=True, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                st = os.lstat(name)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.lchown(name, uid, gid)


def mounts(cfg: Config, state: Path, workdir: Path, sources: list[str]) -> dict[str, dict[str, str]]:
    """Host folders the tasks see, at the same paths (kfp mounts its run folder itself)."""
    out = {str(workdir): {"bind": str(workdir), "mode": "ro"}, str(state): {"bind": str(state), "mode": "rw"}}
    for folder in written(cfg):
        if not _under(folder, state):
            out[str(folder)] = {"bind": str(folder), "mode": "rw"}
    for s in [*sources, *cfg.build.sources]:
        if "://" in s:
            continue
        p = Path(s).resolve()
        while not p.exists() and p != p.parent:  # a glob: its existing parent
            p = p.parent
        if p.exists() and not _under(p, workdir) and not _under(p, state):
            out[str(p)] = {"bind": str(p), "mode": "ro"}
    return out


def written(cfg: Config) -> list[Path]:
    """The config's folders the tasks write: lmops' stage cache and the workdir (Ray Train's storage)."""
    folders = [Path(cfg.workdir).resolve()]
    if cfg.cache_dir:
        folders.append(Path(cfg.cache_dir).resolve())
    return folders


def _check_readable(folder: Path, uid: int, mode: str) -> None:
    """A mounted folder keeps its host permissions: one the task user cannot enter (a 0700 folder of root's,
    such as a temporary directory) would fail every task with a bare PermissionError; say so up front."""
    from lmops.errors import LmopsError

    st = folder.stat()
    if st.st_uid == uid or (st.st_mode & 0o005) == 0o005:
        return
    raise LmopsError(f"{folder} (mode {stat.S_IMODE(st.st_mode):o}, owner {st.st_uid}) is mounted {mode} into the"
                     f" task containers, which run as UID {uid} and cannot read it: `chmod o+rx {folder}` or run"
                     " from another folder")


def _under(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def runner_args(cfg: Config, *, image: str, state: Path, workdir: Path, sources: list[str], env: dict[str, str],
                run_id: str) -> dict[str, Any]:
    """The docker-SDK ``containers.run`` arguments every task container gets."""
    uid, gid = task_user()
    extra = {"userns_mode": "keep-id"} if os.geteuid() != 0 and _podman_rootless() else {}
    return {"user": f"{uid}:{gid}", "read_only": True, "tmpfs": {"/tmp": "rw,exec,mode=1777"},
            "network_mode": "host", "shm_size": "1g", "working_dir": str(workdir),
            "environment": {"HOME": "/tmp", "LMOPS_STATE_DIR": str(state), "RAY_AUTH_MODE": "disabled", **env},
            "labels": {RUN_LABEL: run_id, "dev.lmops.image": image},
            "volumes": mounts(cfg, state, workdir, sources), **extra}


def _podman_rootless() -> bool:
    return os.geteuid() != 0 and not os.environ.get("DOCKER_HOST", "").endswith("docker.sock")


def deploy_extra(api_url: str, image: str, user: str) -> dict[str, Any]:
    """What the deploy task's container alone gets: the engine's API socket (and its group, to open it),
    and the image and user to start the model server container with."""
    sock = api_url.removeprefix("unix://")
    extra: dict[str, Any] = {
        "volumes": {sock: {"bind": SOCKET_IN_CONTAINER, "mode": "rw"}},
        "environment": {"DOCKER_HOST": f"unix://{SOCKET_IN_CONTAINER}", "LMOPS_SERVE_IMAGE": image,
                        "LMOPS_SERVE_USER": user},
    }
    st = os.stat(sock)
    if stat.S_ISSOCK(st.st_mode) and st.st_uid != int(user.split(":")[0]):
        # podman creates it 0600: open it to its group, which only this container is added to (the socket
        # sits in a private 0700 folder: nobody else on the host reaches it)
        os.chmod(sock, 0o660)
        extra["group_add"] = [str(st.st_gid)]
    return extra


@contextlib.contextmanager
def container_runner(cfg: Config, *, engine: Engine, image: str, state: Path, run_root: Path,
                     sources: list[str], env: dict[str, str]) -> Iterator[Any]:
    """kfp's DockerRunner for one run, with the engine's API up and kfp's task handler fixed until the end."""
    from kfp import local

    from lmops.images.api import engine_api
    from lmops.pipeline import kfp_docker, servers

    workdir = Path.cwd()
    uid, gid = task_user()
    # what the containers write: the run's folder, the server records, lmops' stage cache, the workdir
    hand_over([run_root, state / "servers", *written(cfg)], uid, gid)
    # the sample corpus is made from the standard library of the Python that makes it: make it here, as
    # `make run` does, so that both runners train on the same data
    from lmops.data.sample_corpus import ensure_sample_corpus

    ensure_sample_corpus(cfg.build.sources)
    # a model server `make run` started is a process of this machine that the deploy task's container
    # could not stop: stop it now (a container one is replaced by the deploy task itself)
    name = f"serve-{cfg.serve.model_name}"
    rec = servers.read_record(name)
    if rec is not None and rec.get("kind") != "container":
        servers.stop(name)
    args = runner_args(cfg, image=image, state=state, workdir=workdir, sources=sources, env=env,
                       run_id=run_root.name)
    volumes = args.pop("volumes")
    for host, spec in volumes.items():
        _check_readable(Path(host), uid, spec["mode"])
    with engine_api(engine) as api_url:
        deploy = deploy_extra(api_url, image, args["user"])

        def extra_for(function: str) -> dict[str, Any]:
            extra: dict[str, Any] = {"image": image, "volumes": dict(volumes)}
            if function == "deploy":
                extra["volumes"].update(deploy["volumes"])
                extra["environment"] = dict(deploy["environment"])
                extra.update({k: v for k, v in deploy.items() if k not in ("volumes", "environment")})
            return extra

        previous = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = api_url  # kfp's handler uses docker.from_env()
        try:
            with kfp_docker.fixed_handler(extra_for):
                yield local.DockerRunner(**args)
        finally:
            if previous is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = previous
