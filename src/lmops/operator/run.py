"""`lmops operator`: run the kopf operator (operators/handlers.py) with lmops' settings."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from pathlib import Path

from lmops.config import REPO_ROOT, ImageConfig, ServeConfig
from lmops.errors import LmopsError
from lmops.operator import runtime
from lmops.operator.executors.kubernetes import settings_env
from lmops.operator.settings import Settings
from lmops.serve.auth import client_key

HANDLERS = REPO_ROOT / "operators" / "handlers.py"
SECRET_ENV = "LMOPS_WEBHOOK_SECRET"


def settings_from(args) -> Settings:
    secret = os.environ.get(SECRET_ENV)
    port = None if args.webhook_port is None or args.webhook_port < 0 else args.webhook_port
    if port is not None and not secret:
        raise LmopsError(f"--webhook-port needs the shared secret in ${SECRET_ENV} (deliveries are HMAC-verified);"
                         " or leave the receiver off and rely on the poll")
    return Settings(tracking_uri=args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), poll_s=args.poll_seconds,
                    runs_dir=Path(args.runs_dir), webhook_host=args.webhook_host, webhook_port=port,
                    webhook_secret=secret, namespaces=list(args.namespace or []), image=image_from_env(),
                    api_key_secret=os.environ.get("LMOPS_SERVING_API_KEY_SECRET") or None,
                    probe_api_key=client_key(ServeConfig()), **settings_env())


def image_from_env() -> ImageConfig:
    """The image setting from the environment the chart gives the operator (unset = the defaults)."""
    given = {field: os.environ[var] for field, var in (("repository", "LMOPS_IMAGE_REPOSITORY"),
                                                         ("tag", "LMOPS_IMAGE_TAG"),
                                                         ("pull_policy", "LMOPS_IMAGE_PULL_POLICY"))
             if os.environ.get(var)}
    try:
        return ImageConfig(**given)
    except ValueError as e:
        raise LmopsError(f"$LMOPS_IMAGE_*: {e}") from None


def load_handlers(path: Path = HANDLERS) -> None:
    if not path.is_file():
        raise LmopsError(f"operator handlers not found at {path} (set --handlers)")
    spec = importlib.util.spec_from_file_location("lmops_operator_handlers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers the handlers with kopf's default registry


def release_finalizers(namespaces: list[str], client=None) -> list[str]:
    """Drop the operator's finalizer from every LMTrainingJob and ModelDeployment in ``namespaces``: for an
    operator uninstalled for good (the chart's post-delete hook), whose objects could otherwise never be
    deleted -- nor their namespace, which stays Terminating. Returns "Kind namespace/name" per object."""
    from lmops import kube
    from lmops.crd import API_VERSION

    released = []
    for ns in namespaces:
        for kind in ("LMTrainingJob", "ModelDeployment"):
            for obj in kube.list_objects(API_VERSION, kind, ns, client=client)[0]:
                name = obj["metadata"]["name"]
                if kube.remove_finalizers(API_VERSION, kind, name, ns, client=client):
                    released.append(f"{kind} {ns}/{name}")
    return released


def wait_pods_gone(namespaces: list[str], selector: str, timeout_s: float = 180, client=None) -> None:
    """Wait until no pod matching the label ``selector`` ("k=v,k2=v2") is left in ``namespaces``: a running
    operator (kopf) puts its finalizer back on the next event of each object, so releasing them is only final
    once the operator's pods are gone. Raises on timeout, naming the pods that stayed."""
    from lmops import kube

    deadline = time.monotonic() + timeout_s
    while True:
        left = [f"{ns}/{p['metadata']['name']}" for ns in namespaces
                for p in kube.list_objects("v1", "Pod", ns, client=client, label_selector=selector)[0]]
        if not left:
            return
        if time.monotonic() > deadline:
            raise LmopsError(f"the operator's pods ({selector}) were still there after {timeout_s:.0f} s: {left};"
                             " its finalizers were not released (a running operator would put them back)")
        time.sleep(1)


def run(args) -> int:
    import kopf

    if args.release_finalizers:
        if not args.namespace:
            raise LmopsError("--release-finalizers needs the namespaces (--namespace, repeatable)")
        if args.wait_pods_gone:
            wait_pods_gone(args.namespace, args.wait_pods_gone)
        released = release_finalizers(args.namespace)
        print("released the lmops finalizer of: " + (", ".join(released) if released else "nothing"))
        return 0
    settings = settings_from(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    runtime.configure(settings)
    load_handlers(Path(args.handlers) if args.handlers else HANDLERS)
    namespaces = settings.namespaces or None
    asyncio.run(kopf.operator(standalone=True, namespaces=namespaces, clusterwide=namespaces is None,
                              liveness_endpoint=f"http://{args.health_host}:{args.health_port}/healthz"
                              if args.health_port else None))
    return 0
