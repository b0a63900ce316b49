"""The operator process: one reconcile loop per resource, woken early by webhooks and spec changes.

Each loop reads its resource fresh from the API server before every reconcile (never kopf's cached
body, which can lag the status we just wrote and would make us decide twice), reconciles in a worker
thread (the registry and model-server calls block), then sleeps until the reconcile's requeue time,
the poll interval, or a wake-up: a verified MLflow webhook for its model, or a change of its spec.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lmops import kube
from lmops.crd import API_VERSION
from lmops.operator import deployments, training
from lmops.operator.settings import Settings
from lmops.operator.webhook import RegistryEvent, Verifier, WebhookServer

log = logging.getLogger("lmops.operator")


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wakeups: dict[tuple[str, str], asyncio.Event] = {}
        self.models: dict[tuple[str, str], str] = {}  # deployment -> the MLflow model it serves
        self.webhook: WebhookServer | None = None

    # ---------------------------------------------------------- start and stop
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        s = self.settings
        if s.webhook_port is not None:
            self.webhook = WebhookServer(s.webhook_host, s.webhook_port, Verifier(s.webhook_secret),
                                         self.on_registry_event).start()
            log.info("MLflow webhook receiver on %s", self.webhook.url)

    def stop(self) -> None:
        if self.webhook is not None:
            self.webhook.stop()

    # ---------------------------------------------------------- wake-ups
    def wake(self, namespace: str, name: str) -> None:
        event = self.wakeups.get((namespace, name))
        if event is not None:
            event.set()

    def on_registry_event(self, event: RegistryEvent) -> None:
        """Called in the webhook server's thread: wake every deployment of that model."""
        for key, model in list(self.models.items()):
            if model == event.model and self.loop is not None:
                self.loop.call_soon_threadsafe(self.wake, *key)

    # ---------------------------------------------------------- loops
    async def deployment_loop(self, namespace: str, name: str, stopped) -> None:
        await self._loop(namespace, name, stopped, "ModelDeployment", self._deployment_once)

    async def training_loop(self, namespace: str, name: str, stopped) -> None:
        await self._loop(namespace, name, stopped, "LMTrainingJob", self._training_once)

    def _deployment_once(self, obj: dict[str, Any]) -> float | None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.models[key] = ((obj.get("spec") or {}).get("model") or {}).get("name")
        return deployments.reconcile(obj, self.settings)

    def _training_once(self, obj: dict[str, Any]) -> float | None:
        return training.reconcile(obj, self.settings)

    async def _loop(self, namespace: str, name: str, stopped, kind: str, once) -> None:
        key = (namespace, name)
        wake = self.wakeups.setdefault(key, asyncio.Event())
        try:
            while not stopped:
                wake.clear()
                delay = self.settings.poll_s
                try:
                    obj = await asyncio.to_thread(kube.get, API_VERSION, kind, name, namespace)
                    if obj is None or obj["metadata"].get("deletionTimestamp"):
                        return
                    after = await asyncio.to_thread(once, obj)
                    delay = self.settings.poll_s if after is None else min(after, self.settings.poll_s)
                except Exception as e:  # noqa: BLE001 - one failed reconcile must not end the loop
                    log.warning("%s %s/%s: reconcile failed (retrying in %.0fs): %s", kind, namespace, name,
                                delay, e, exc_info=not isinstance(e, (kube.KubeError,)))
                if delay > 0:
                    try:
                        await asyncio.wait_for(wake.wait(), timeout=delay)
                    except asyncio.TimeoutError:
                        pass
        finally:
            self.wakeups.pop(key, None)
            self.models.pop(key, None)


RUNTIME: Runtime | None = None


def configure(settings: Settings) -> Runtime:
    global RUNTIME
    RUNTIME = Runtime(settings)
    return RUNTIME
