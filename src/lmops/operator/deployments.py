"""One reconcile of a ModelDeployment: observe, decide (lmops.rollout), record, act.

The order is the point: the decision is written to status before any action, and the actions are
derived from that status, so an operator killed anywhere in here re-derives the same (idempotent)
actions on restart and never repeats a transition.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from lmops import kube
from lmops.crd import API_VERSION, SpecError, parse_deployment
from lmops.crd.deployment import ModelDeploymentSpec
from lmops.observe import ProbeError, bits_per_byte, probe_texts, read_metrics
from lmops.operator import service
from lmops.operator.settings import Settings
from lmops.registry import rollout as registry_rollout
from lmops.rollout.status import status_patch
from lmops.rollout import (ApplyService, GateInputs, Notify, Observed, RecordAliasMove, RevertAlias, ServiceState,
                           decide, invalid_spec, needs_gates)

log = logging.getLogger("lmops.operator")
KIND = "ModelDeployment"
WARNING_OUTCOMES = ("RolledBack", "Failed", "Aborted")


def reconcile(obj: dict[str, Any], settings: Settings, *, now: dt.datetime | None = None, client=None) -> float:
    """Returns the seconds until the next reconcile (the poll interval at most)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    meta, status = obj["metadata"], dict(obj.get("status") or {})
    generation = meta.get("generation", 0)
    try:
        spec = parse_deployment(obj.get("spec"))
    except SpecError as e:
        decision = invalid_spec(status, e, generation, now)
        _record(meta, status, decision.status, client)
        _act(obj, None, decision, settings, client)
        return settings.poll_s
    tracking = spec.model.tracking_uri or settings.tracking_uri
    alias = None if spec.model.version else registry_rollout.alias_version(tracking, spec.model.name, spec.model.alias)
    target = spec.model.version or alias
    svc = service.observe(kube.get(*service.api(), meta["name"], meta["namespace"], client=client))
    gates = measure(spec, meta, svc, settings, client) if needs_gates(spec, status, svc, now) else None
    decision = decide(spec, status, Observed(now, target, alias, svc, gates), generation)
    _record(meta, status, decision.status, client)
    _act(obj, spec, decision, settings, client)
    after = decision.requeue_after
    return settings.poll_s if after is None else max(0.2, min(after, settings.poll_s))


def measure(spec: ModelDeploymentSpec, meta: dict[str, Any], svc: ServiceState, settings: Settings,
            client=None) -> GateInputs | None:
    """Error rate and p95 from the canary's /metrics; the quality probe on the canary and the stable.
    None when KServe does not show both revisions' URLs yet (decide then waits)."""
    import requests

    if not (svc.canary_url and svc.stable_url):
        return None
    try:
        m = read_metrics(svc.canary_url)
        requests_, errors, p95 = m.requests, m.errors, m.p95_ms
    except (requests.RequestException, ValueError) as e:
        log.warning("canary /metrics unreadable at %s: %s", svc.canary_url, e)
        requests_, errors, p95 = 0.0, 0.0, None
    probe = spec.rollout.gates.quality_probe
    if probe is None:
        return GateInputs(requests_, errors, p95)
    try:
        ref = probe.config_map_ref
        texts = probe_texts(probe.texts, _config_map(ref, meta["namespace"], client), ref.key if ref else "probe.txt",
                            probe.uri)
        # the served model's name is the InferenceService's (lmops serve --name)
        canary = bits_per_byte(svc.canary_url, meta["name"], texts, settings.probe_timeout_s, settings.probe_api_key)
        stable = bits_per_byte(svc.stable_url, meta["name"], texts, settings.probe_timeout_s, settings.probe_api_key)
    except ProbeError as e:
        return GateInputs(requests_, errors, p95, probe_error=str(e))
    # the probe's own requests went to the canary: read its metrics again so they count
    try:
        m = read_metrics(svc.canary_url)
        requests_, errors, p95 = m.requests, m.errors, m.p95_ms
    except (requests.RequestException, ValueError):
        pass
    return GateInputs(requests_, errors, p95, canary, stable)


def _config_map(ref, namespace: str, client) -> dict[str, str] | None:
    if ref is None:
        return None
    cm = kube.get("v1", "ConfigMap", ref.name, namespace, client=client)
    if cm is None:
        raise ProbeError(f"probe ConfigMap {namespace}/{ref.name} not found")
    return cm.get("data") or {}


def _record(meta: dict[str, Any], old: dict[str, Any], new: dict[str, Any], client) -> None:
    patch = status_patch(old, new)
    if patch:
        if kube.patch_status(API_VERSION, KIND, meta["name"], meta["namespace"], patch, client=client) is None:
            raise kube.KubeError(f"{KIND} {meta['namespace']}/{meta['name']} is gone")


def _act(obj: dict[str, Any], spec: ModelDeploymentSpec | None, decision, settings: Settings, client) -> None:
    """Carry out the derived actions, then record which of them are done (a kill before that repeats
    them, and each writes only what is missing)."""
    meta = obj["metadata"]
    tracking = (spec.model.tracking_uri if spec else None) or settings.tracking_uri
    done: dict[str, Any] = {}
    for action in decision.actions:
        if isinstance(action, ApplyService) and spec is not None:
            kube.apply(service.render(obj, spec, action.desired, tracking, settings.image, settings.api_key_secret),
                       client=client)
        elif isinstance(action, RecordAliasMove):
            if registry_rollout.record_seen(tracking, spec.model.name, action.alias, action.version, action.last_seen):
                log.info("%s/%s: alias %s moved %s -> %s (recorded in its history)", meta["namespace"], meta["name"],
                         action.alias, action.last_seen, action.version)
            done["aliasVersion"] = action.version
        elif isinstance(action, RevertAlias):
            back = registry_rollout.revert_alias(tracking, spec.model.name, action.alias, action.from_version,
                                                 action.to_version, action.reason, action.at)
            log.info("%s/%s: alias %s %s", meta["namespace"], meta["name"], action.alias,
                     f"back on {action.to_version} (from {action.from_version})" if back
                     else "was moved elsewhere meanwhile: left there")
            done["lastRollback"] = {**decision.status["lastRollback"], "aliasReverted": True}
        elif isinstance(action, Notify):
            _notify(obj, spec, action.entry, tracking, client)
    if decision.notified_seq != decision.status.get("notifiedSeq", 0):
        done["notifiedSeq"] = decision.notified_seq
    if done:
        _record(meta, {k: decision.status.get(k) for k in done}, done, client)


def _notify(obj: dict[str, Any], spec: ModelDeploymentSpec | None, entry: dict[str, Any], tracking, client) -> None:
    meta = obj["metadata"]
    message = f"version {entry['version']}: {entry['outcome']}" + (f": {entry['reason']}" if entry.get("reason") else "")
    kube.create_event(obj, name=f"{meta['name']}.{meta['uid'][:8]}.{entry['seq']}", reason=entry["outcome"],
                      message=message, type_="Warning" if entry["outcome"] in WARNING_OUTCOMES else "Normal",
                      client=client)
    if spec is not None and entry["outcome"] in ("Deployed", "Promoted", "RolledBack", "Failed"):
        registry_rollout.record_outcome(tracking, spec.model.name, entry, f"{meta['namespace']}/{meta['name']}")
