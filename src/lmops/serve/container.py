"""The local model server as a detached container of the lmops image (``make run RUNNER=container``).

In container mode the deploy task itself runs in a container that ends with the task, so the server it
starts cannot be its child process: it is a container of its own, started through the engine's API
($DOCKER_HOST, which only the deploy task's container is given), non-root with a read-only root file
system and the host's network, so its URL is the same 127.0.0.1:PORT as a subprocess server's.
``lmops stop`` removes it (through the API when $DOCKER_HOST is set, else the engine's command line).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from lmops.config import Config, ServeConfig
from lmops.serve.auth import ENV_KEYS, client_key, load_keys
from lmops.serve.endpoint import protocol_urls, registry_env, smoke_test, wait_ready, with_port

SERVE_IMAGE_ENV = "LMOPS_SERVE_IMAGE"


def requested() -> bool:
    """Does this deploy run where the server must be a container (the container runner's deploy task)?"""
    return bool(os.environ.get(SERVE_IMAGE_ENV))


def container_name(model_name: str) -> str:
    return "lmops-serve-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", model_name)


def deploy_container(cfg: Config, model_uri: str, out: Path) -> dict[str, Any]:
    """Start the server container for ``model_uri``, wait until it is ready, smoke-test it."""
    serve, keys_env = server_keys(with_port(cfg.serve))
    port = serve.port
    config_path = out / "serve-config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_copy(update={"serve": serve}).model_dump(mode="json"),
                                          sort_keys=False))
    name = container_name(serve.model_name)
    remove(name)
    client = _client()
    env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "LMOPS_CODE_VERSION", "LMOPS_S3_ENDPOINT_URL",
                                      "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
           if os.environ.get(k)}
    env.update(keys_env)
    env.update(registry_env(cfg))  # the run's MLflow server, also when given only as a pipeline parameter
    container = client.containers.run(
        os.environ[SERVE_IMAGE_ENV], ["lmops", "serve", "-c", str(config_path), "--model", model_uri],
        name=name, detach=True, user=os.environ.get("LMOPS_SERVE_USER", "1000:1000"), read_only=True,
        tmpfs={"/tmp": "rw,exec,mode=1777"}, network_mode="host", working_dir="/tmp",  # relative paths: scratch
        environment={"HOME": "/tmp", **env}, volumes={str(out): {"bind": str(out), "mode": "ro"}},
        labels={"dev.lmops.serve": serve.model_name, "dev.lmops.model-uri": model_uri})
    base = f"http://{'127.0.0.1' if serve.host in ('0.0.0.0', '') else serve.host}:{port}"
    urls = protocol_urls(base, serve.model_name)
    try:
        _wait_ready(container, urls["ready"], cfg.deploy.ready_timeout_s)
        smoke = smoke_test(urls["v1_predict"], cfg.deploy.smoke_prompt, client_key(cfg.serve))
    except BaseException:
        remove(name)
        raise
    finally:
        client.close()
    return {"target": "local", "url": base, "model_name": serve.model_name, "model_uri": model_uri,
            "container": name, "image": os.environ[SERVE_IMAGE_ENV], "host": serve.host, "port": port,
            "log": f"podman logs {name}  (or docker logs)", "config": str(config_path), "protocols": urls,
            "smoke": smoke}


def server_keys(serve: ServeConfig) -> tuple[ServeConfig, dict[str, str]]:
    """The server container's API keys: read here (``serve.api_key_file`` is a path where deploy runs, which the
    container does not see) and given as ``$LMOPS_API_KEYS``, the way vLLM's image takes ``$VLLM_API_KEY``; the
    config the container reads names no file. An unreadable or empty key file fails here, before any container."""
    keys = load_keys(serve)
    return serve.model_copy(update={"api_key_file": None}), ({ENV_KEYS: ",".join(keys)} if keys else {})


def _wait_ready(container: Any, ready_url: str, timeout: float) -> None:
    def exited() -> str | None:
        container.reload()
        if container.status in ("exited", "dead"):
            return f"exited ({container.attrs['State'].get('ExitCode')})"
        return None

    def running() -> bool:  # the answer came from this container's server
        container.reload()
        return container.status == "running"

    wait_ready(ready_url, timeout, what="server container", exited=exited, running=running,
               last_lines=lambda: _logs(container))


def _logs(container: Any, lines: int = 15) -> str:
    try:
        return container.logs(tail=lines).decode(errors="replace")
    except Exception:  # noqa: BLE001 (a diagnostic only)
        return "(no log)"


def _client():
    import docker

    return docker.from_env(timeout=60)


def _cli():
    from lmops.images.engine import detect

    return detect()


def running(name: str) -> bool:
    """Is the server container up? (Through the API when we have it, else the engine's command line.)"""
    if os.environ.get("DOCKER_HOST"):
        import docker

        client = _client()
        try:
            return client.containers.get(name).status == "running"
        except docker.errors.NotFound:
            return False
        finally:
            client.close()
    try:
        proc = _cli().run("container", "inspect", "--format", "{{.State.Running}}", name, check=False)
    except Exception:  # noqa: BLE001 (no engine here: then no container either)
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def remove(name: str) -> bool:
    """Stop and remove the server container; False when there was none."""
    if os.environ.get("DOCKER_HOST"):
        import docker

        client = _client()
        try:
            client.containers.get(name).remove(force=True)
            return True
        except docker.errors.NotFound:
            return False
        finally:
            client.close()
    try:
        engine = _cli()
    except Exception:  # noqa: BLE001
        return False
    return engine.run("rm", "-f", name, check=False).returncode == 0
