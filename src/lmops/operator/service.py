"""The ModelDeployment's InferenceService: rendered from the desired one, read back as a ServiceState.

KServe's canary model: the predictor spec is the newest version (a new revision); with
``canaryTrafficPercent`` that revision takes the given share and the last rolled-out one the rest;
without it the new revision takes all traffic once ready. So the desired service (stable, canary,
percent) renders as: predictor = the canary's version (else the stable's) and the percent. Tag routing
gives each revision its own URL (traffic tags ``latest`` and ``prev``), which is how the gates reach
the canary and the stable separately. Which versions were applied is kept in annotations, since a
revision name says nothing about the model in it.

A rollback is KServe's own: the desired service (stable, rejected canary, 0%) renders the rejected version
with ``canaryTrafficPercent: 0``, so all traffic is back on the rolled-out revision at once and KServe stops
the canary's; the stable spec is not applied again (a new revision of a version that already serves: a cold
start). The spec stays so until the next version's canary replaces it (``ServiceState.serves``).
"""

from __future__ import annotations

from typing import Any

from lmops.config import DeployConfig, ImageConfig, ServeConfig
from lmops.crd import API_VERSION
from lmops.crd.deployment import ModelDeploymentSpec
from lmops.rollout import DesiredService, ServiceState
from lmops.serve.inference_service import API_VERSION as ISVC_API, render_inference_service

KIND = "InferenceService"
STABLE_ANN, CANARY_ANN = "lmops.dev/stable-version", "lmops.dev/canary-version"
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"


def render(md: dict[str, Any], spec: ModelDeploymentSpec, desired: DesiredService, tracking_uri: str | None,
           image: ImageConfig | None = None, api_key_secret: str | None = None) -> dict[str, Any]:
    meta = md["metadata"]
    sv = spec.serving
    env = dict(sv.env)
    if tracking_uri:
        env.setdefault("MLFLOW_TRACKING_URI", tracking_uri)  # the lmops container resolves models:/ itself
    cfg = DeployConfig(target="kubernetes", name=meta["name"], namespace=meta["namespace"], runtime=sv.runtime,
                       image=sv.image, service_account=sv.service_account_name, env=env,
                       resources={"cpu": sv.cpu, "memory": sv.memory, "gpus": sv.gpus},
                       min_replicas=sv.min_replicas, max_replicas=sv.max_replicas,
                       canary_traffic_percent=desired.canary_percent, api_key_secret=api_key_secret,
                       tolerations=[t.model_dump(by_alias=True, exclude_none=True) for t in sv.tolerations] or None)
    isvc = render_inference_service(cfg, ServeConfig(), f"models:/{spec.model.name}/{desired.serving}",
                                    labels={"lmops.dev/deployment": meta["name"]}, image=image)
    isvc["metadata"]["annotations"].update({STABLE_ANN: desired.stable or "", CANARY_ANN: desired.canary or "",
                                            TAG_ROUTING: "true"})
    isvc["metadata"]["ownerReferences"] = [{"apiVersion": API_VERSION, "kind": "ModelDeployment",
                                            "name": meta["name"], "uid": meta["uid"], "controller": True,
                                            "blockOwnerDeletion": True}]
    predictor = isvc["spec"]["predictor"]
    if desired.canary_percent is None:
        predictor.pop("canaryTrafficPercent", None)
    return isvc


def observe(isvc: dict[str, Any] | None) -> ServiceState | None:
    if isvc is None:
        return None
    meta = isvc["metadata"]
    ann = meta.get("annotations") or {}
    predictor_spec = (isvc.get("spec") or {}).get("predictor") or {}
    applied = DesiredService(ann.get(STABLE_ANN) or None, ann.get(CANARY_ANN) or None,
                             predictor_spec.get("canaryTrafficPercent"))
    status = isvc.get("status") or {}
    current = status.get("observedGeneration") == meta.get("generation")
    pred = (status.get("components") or {}).get("predictor") or {}
    created = pred.get("latestCreatedRevision")
    latest_ready = bool(created) and pred.get("latestReadyRevision") == created
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    failed = ready.get("message") or "revision failed" if (ready.get("status") == "False"
                                                           and ready.get("reason") == "RevisionFailed") else None
    traffic = pred.get("traffic") or []
    by_tag = {t.get("tag"): t.get("url") for t in traffic if t.get("tag")}
    canary_url = by_tag.get("latest") if applied.canary else None
    stable_url = by_tag.get("prev") or (status.get("url") if status.get("url") else None)
    if applied.canary and not by_tag.get("prev"):
        stable_url = next((t.get("url") for t in traffic if not t.get("latestRevision")), None)
    return ServiceState(applied, current, latest_ready, failed, canary_url, stable_url)


def api() -> tuple[str, str]:
    return ISVC_API, KIND
