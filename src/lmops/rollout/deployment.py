"""ModelDeployment: the canary rollout and rollback state machine.

Phases::

    (none) --first version--> Stable --alias moves--> Progressing --all steps pass--> Stable (promoted)
                                 ^                        |
                                 |                        +--a gate fails past failureLimit--> RollingBack
                                 +------ traffic (and alias) back on the stable version ------------+

What the status says is what should be: ``desired_service(status)`` is the InferenceService to apply,
``RevertAlias`` follows from ``phase: RollingBack`` and a ``lastRollback`` whose alias is not yet
reverted, ``RecordAliasMove`` from an alias that moved since ``aliasVersion``, ``Notify`` from history
entries past ``notifiedSeq``. So the operator records a decision, then acts; killed in between, it
derives the same actions from the recorded status (each writes only what is missing), and the
transition itself is never repeated.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from lmops.crd.common import SpecError
from lmops.crd.deployment import ModelDeploymentSpec
from lmops.rollout.status import append_history, iso, seconds_since, set_condition

STABLE, PROGRESSING, ROLLING_BACK, FAILED = "Stable", "Progressing", "RollingBack", "Failed"
RECHECK_S = 2.0  # while waiting on something we cannot be told about (readiness, a revert)


# ---------------------------------------------------------------- what the operator observed
@dataclass(frozen=True)
class DesiredService:
    """The InferenceService the status asks for: who serves, and the canary's share of the traffic."""

    stable: str | None
    canary: str | None = None
    canary_percent: int | None = None

    @property
    def serving(self) -> str | None:
        """The version of the predictor spec (KServe's latest revision)."""
        return self.canary or self.stable


@dataclass(frozen=True)
class ServiceState:
    """The owned InferenceService as read back: what was applied, and what KServe says about it."""

    applied: DesiredService
    current: bool = True
    """KServe's status describes the applied spec (status.observedGeneration == metadata.generation)."""
    latest_ready: bool = False
    """The latest revision (the one serving ``applied.serving``) is ready."""
    latest_failed: str | None = None
    """Why the latest revision failed (RevisionFailed), else None."""
    canary_url: str | None = None
    stable_url: str | None = None

    def serves(self, desired: DesiredService | None) -> bool:
        """What was applied gives the desired traffic. A canary parked at 0% (KServe's rollback: the spec
        keeps the rejected version, all traffic on the rolled-out revision) is the stable version alone:
        applying the stable spec again would start a new revision of a version that already serves."""
        a = self.applied
        return a == desired or (desired is not None and desired.canary is None and a.canary is not None
                                and a.canary_percent == 0 and a.stable == desired.stable)


@dataclass(frozen=True)
class GateInputs:
    """Measured on the canary (and the stable, for the quality probe) after a step's pause."""

    requests: float = 0.0
    errors: float = 0.0
    p95_ms: float | None = None
    canary_bpb: float | None = None
    stable_bpb: float | None = None
    probe_error: str | None = None


@dataclass(frozen=True)
class Observed:
    now: dt.datetime
    target: str | None
    """The version the spec asks for: the pinned version, else the alias's (None: alias not set)."""
    alias: str | None = None
    """Where the tracked alias points now (None: unset, or the spec pins a version)."""
    service: ServiceState | None = None
    gates: GateInputs | None = None


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str


# ---------------------------------------------------------------- what the operator should do
@dataclass(frozen=True)
class ApplyService:
    desired: DesiredService


@dataclass(frozen=True)
class RevertAlias:
    """Move the alias from ``from_version`` (the rejected one) back to ``to_version``, only if it is
    still on ``from_version`` (a user who moved it meanwhile wins), and tag the rejected version with
    the decision's time ``at`` and ``reason``. Done: the operator sets ``lastRollback.aliasReverted``."""

    alias: str
    from_version: str
    to_version: str
    reason: str
    at: str


@dataclass(frozen=True)
class RecordAliasMove:
    """Write a move of the alias that the operator saw (to ``version``; None: removed) into the alias
    history, with ``last_seen`` as the previous holder where the history knows none. Done: the operator
    sets ``aliasVersion`` to ``version``."""

    alias: str
    version: str | None
    last_seen: str | None


@dataclass(frozen=True)
class Notify:
    """A Kubernetes Event and MLflow version tags for one history entry (both idempotent by ``seq``)."""

    entry: dict[str, Any]


@dataclass
class Decision:
    status: dict[str, Any]
    actions: list[Any] = field(default_factory=list)
    requeue_after: float | None = None

    @property
    def notified_seq(self) -> int:
        """What ``notifiedSeq`` becomes once the Notify actions are done."""
        return max([a.entry["seq"] for a in self.actions if isinstance(a, Notify)],
                   default=self.status.get("notifiedSeq", 0))


# ---------------------------------------------------------------- the decisions
def desired_service(status: dict[str, Any]) -> DesiredService | None:
    stable = status.get("stableVersion")
    if status.get("phase") == PROGRESSING and status.get("canaryVersion"):
        percent = status.get("canaryTrafficPercent")
        return DesiredService(stable, status["canaryVersion"], percent if percent and percent < 100 else None)
    if status.get("phase") == ROLLING_BACK and status.get("rejectedVersion") and stable:
        # KServe's rollback: canaryTrafficPercent 0 puts all traffic back on the previous rolled-out
        # revision at once; the rejected version stays in the spec (no new revision of the stable one)
        return DesiredService(stable, status["rejectedVersion"], 0)
    return DesiredService(stable) if stable else None


def needs_gates(spec: ModelDeploymentSpec, status: dict[str, Any], service: ServiceState | None,
                now: dt.datetime) -> bool:
    """Measure the gates (I/O: /metrics, the quality probe) only when ``decide`` will judge them: a
    ready canary at the end of its step's pause."""
    if status.get("phase") != PROGRESSING or service is None or not spec.rollout.steps:
        return False
    if not service.serves(desired_service(status)) or not service.current or not service.latest_ready:
        return False
    step = spec.rollout.steps[status.get("currentStep", 0)]
    return seconds_since(status.get("stepStartedAt"), now) >= step.pause_seconds


def invalid_spec(status: dict[str, Any], error: SpecError, generation: int, now: dt.datetime) -> Decision:
    """A spec the schema let through but we cannot use: say which field, keep serving what was served."""
    out = copy.deepcopy(status)
    set_condition(out, "SpecValid", False, "InvalidSpec", str(error), now, generation)
    out["observedGeneration"] = generation
    return Decision(out, _derived(out, None, None))


def decide(spec: ModelDeploymentSpec, status: dict[str, Any], obs: Observed, generation: int) -> Decision:
    s = copy.deepcopy(status)
    s["observedGeneration"] = generation
    set_condition(s, "SpecValid", True, "Valid", "", obs.now, generation)
    requeue = _transition(spec, s, obs)
    _conditions(s, obs)
    _serving(s)
    return Decision(s, _derived(s, spec, obs), requeue)


def _transition(spec: ModelDeploymentSpec, s: dict[str, Any], obs: Observed) -> float | None:
    phase, stable, target = s.get("phase"), s.get("stableVersion"), obs.target
    limit = spec.history_limit
    if s.get("rejectedVersion") and target != s["rejectedVersion"]:
        s.pop("rejectedVersion")  # the alias left the rejected version: a later return is a new decision
    if phase == ROLLING_BACK:
        return _finish_rollback(spec, s, obs)
    if phase in (None, FAILED) and target and target != stable:
        # nothing healthy to compare against (first version, or the stable one broke): deploy directly
        s.update(phase=STABLE, stableVersion=target, previousVersion=stable)
        _clear_canary(s)
        append_history(s, target, "Deployed", "first version" if stable is None else
                       f"replaces version {stable}, which had failed", obs.now, limit)
        return None
    if phase == STABLE:
        return _from_stable(spec, s, obs)
    if phase == PROGRESSING:
        return _progress(spec, s, obs)
    return None


def _from_stable(spec: ModelDeploymentSpec, s: dict[str, Any], obs: Observed) -> float | None:
    target, stable = obs.target, s["stableVersion"]
    svc = obs.service
    if svc and svc.serves(desired_service(s)) and svc.current and svc.latest_failed:
        s["phase"] = FAILED
        append_history(s, stable, "Failed", f"version {stable} does not serve: {svc.latest_failed}", obs.now,
                       spec.history_limit)
        return None
    if target is None or target == stable or target == s.get("rejectedVersion"):
        return None
    _start_canary(spec, s, target, obs.now)
    return 0.0


def _start_canary(spec: ModelDeploymentSpec, s: dict[str, Any], version: str, now: dt.datetime) -> None:
    s.update(phase=PROGRESSING, canaryVersion=version, currentStep=0, failures=0,
             canaryStartedAt=iso(now), stepStartedAt=iso(now), gateResults=[])
    # no steps: no canaryTrafficPercent, so KServe moves all traffic once the new revision is ready
    s["canaryTrafficPercent"] = spec.rollout.steps[0].traffic_percent if spec.rollout.steps else 100
    append_history(s, version, "CanaryStarted", f"canary of version {version} next to stable version"
                   f" {s['stableVersion']}", now, spec.history_limit)


def _clear_canary(s: dict[str, Any]) -> None:
    for key in ("canaryVersion", "currentStep", "canaryStartedAt", "stepStartedAt", "failures"):
        s.pop(key, None)
    s["canaryTrafficPercent"] = 0


def _progress(spec: ModelDeploymentSpec, s: dict[str, Any], obs: Observed) -> float | None:
    canary, stable, now, limit = s["canaryVersion"], s["stableVersion"], obs.now, spec.history_limit
    if obs.target != canary:
        why = ("the alias was removed" if obs.target is None else
               f"the alias moved back to stable version {stable}" if obs.target == stable else
               f"superseded by version {obs.target}")
        append_history(s, canary, "Aborted", why, now, limit)
        s["phase"] = STABLE
        _clear_canary(s)
        if obs.target not in (None, stable):
            _start_canary(spec, s, obs.target, now)
            return 0.0
        return None
    if not spec.rollout.steps:  # no canary steps: promote as soon as the new version is ready
        return _judge_ready_only(spec, s, obs)
    svc = obs.service
    applied = svc is not None and svc.serves(desired_service(s)) and svc.current
    ready_timeout = spec.rollout.gates.ready_timeout_seconds
    waited = seconds_since(s.get("canaryStartedAt"), now)
    if applied and svc.latest_failed:
        return _fail(spec, s, obs, "ready", f"version {canary} did not start: {svc.latest_failed}", terminal=True)
    if not (applied and svc.latest_ready):
        if waited >= ready_timeout:
            return _fail(spec, s, obs, "ready", f"version {canary} not ready within {ready_timeout}s", terminal=True)
        return min(RECHECK_S, ready_timeout - waited)
    step = spec.rollout.steps[s["currentStep"]]
    left = step.pause_seconds - seconds_since(s.get("stepStartedAt"), now)
    if left > 0:
        return left
    if obs.gates is None:
        return RECHECK_S  # the operator measures when needs_gates() says so; nothing measured yet
    checks = evaluate_gates(spec, obs.gates)
    s["gateResults"] = [_result(c, now) for c in checks]
    failed = [c for c in checks if not c.passed]
    if failed:
        return _fail(spec, s, obs, failed[0].name, "; ".join(c.message for c in failed))
    if s["currentStep"] + 1 < len(spec.rollout.steps):
        s["currentStep"] += 1
        s["canaryTrafficPercent"] = spec.rollout.steps[s["currentStep"]].traffic_percent
        s["stepStartedAt"] = iso(now)
        return 0.0
    return _promote(spec, s, now, "; ".join(c.message for c in checks) or "all gates passed")


def _judge_ready_only(spec: ModelDeploymentSpec, s: dict[str, Any], obs: Observed) -> float | None:
    svc = obs.service
    if svc and svc.serves(desired_service(s)) and svc.current:
        if svc.latest_failed:
            return _fail(spec, s, obs, "ready", f"version {s['canaryVersion']} did not start: {svc.latest_failed}",
                         terminal=True)
        if svc.latest_ready:
            return _promote(spec, s, obs.now, "ready (no canary steps)")
    return RECHECK_S


def _promote(spec: ModelDeploymentSpec, s: dict[str, Any], now: dt.datetime, reason: str) -> None:
    canary = s["canaryVersion"]
    append_history(s, canary, "Promoted", reason, now, spec.history_limit)
    s.update(phase=STABLE, previousVersion=s["stableVersion"], stableVersion=canary)
    _clear_canary(s)
    return None


def _fail(spec: ModelDeploymentSpec, s: dict[str, Any], obs: Observed, gate: str, message: str,
          terminal: bool = False) -> float | None:
    """A failed gate: counted against failureLimit (a canary that cannot start is out at once)."""
    s["failures"] = s.get("failures", 0) + 1
    if not terminal and s["failures"] <= spec.rollout.failure_limit:
        s["stepStartedAt"] = iso(obs.now)  # measure again after another pause
        return float(spec.rollout.steps[s["currentStep"]].pause_seconds)
    canary = s["canaryVersion"]
    reason = f"gate {gate} failed: {message}"
    if gate == "ready" and not s.get("gateResults"):
        s["gateResults"] = [{"gate": "ready", "passed": False, "message": message, "at": iso(obs.now)}]
    append_history(s, canary, "RolledBack", reason, obs.now, spec.history_limit)
    s.update(phase=ROLLING_BACK, rejectedVersion=canary,
             lastRollback={"version": canary, "reason": reason, "time": iso(obs.now)})
    _clear_canary(s)
    return 0.0


def _finish_rollback(spec: ModelDeploymentSpec, s: dict[str, Any], obs: Observed) -> float | None:
    svc = obs.service
    traffic_back = svc is not None and svc.serves(desired_service(s))
    if traffic_back and not _revert_pending(spec, s):
        s["phase"] = STABLE
        return None
    return RECHECK_S


def _follows_alias(spec: ModelDeploymentSpec) -> bool:
    return spec.model.version is None


def _revert_pending(spec: ModelDeploymentSpec, s: dict[str, Any]) -> bool:
    """The rollback's alias revert (and its MLflow records) is still to be done."""
    last = s.get("lastRollback") or {}
    return (spec.rollback.revert_alias and _follows_alias(spec) and bool(last)
            and not last.get("aliasReverted") and bool(s.get("stableVersion")))


def evaluate_gates(spec: ModelDeploymentSpec, g: GateInputs) -> list[GateCheck]:
    """Error rate and p95 latency of the canary, and its quality against the stable's, as gate Checks."""
    gates = spec.rollout.gates
    checks = []
    if g.requests >= max(gates.min_requests, 1):
        rate = g.errors / g.requests
        checks.append(GateCheck("errorRate", rate <= gates.max_error_rate, rate, gates.max_error_rate,
                            f"error rate {rate:.3f} of {g.requests:.0f} requests (max {gates.max_error_rate})"))
        if gates.latency_p95_ms is not None and g.p95_ms is not None:
            checks.append(GateCheck("latencyP95", g.p95_ms <= gates.latency_p95_ms, g.p95_ms, gates.latency_p95_ms,
                                f"p95 latency {g.p95_ms:.0f} ms (budget {gates.latency_p95_ms:.0f} ms)"))
    elif gates.min_requests > 0:
        checks.append(GateCheck("errorRate", False, g.requests, gates.min_requests,
                            f"only {g.requests:.0f} requests answered, {gates.min_requests} needed to judge"))
    else:  # recorded, so the status says why no rate was judged
        checks.append(GateCheck("errorRate", True, None, gates.max_error_rate,
                                "no requests answered yet: nothing to judge (minRequests 0)"))
    probe = gates.quality_probe
    if probe is not None:
        if g.probe_error or g.canary_bpb is None or g.stable_bpb is None:
            checks.append(GateCheck("quality", False, None, probe.max_regression,
                                f"quality probe failed: {g.probe_error or 'no score'}"))
        else:
            regression = g.canary_bpb / g.stable_bpb - 1 if g.stable_bpb > 0 else 0.0
            checks.append(GateCheck("quality", regression <= probe.max_regression, regression, probe.max_regression,
                                f"bits per byte {g.canary_bpb:.4f} vs stable {g.stable_bpb:.4f}"
                                f" ({regression:+.1%}, max +{probe.max_regression:.1%})"))
    return checks


def _result(c: GateCheck, now: dt.datetime) -> dict[str, Any]:
    out = {"gate": c.name, "passed": c.passed, "message": c.message, "at": iso(now)}
    if c.value is not None:
        out["value"] = float(c.value)
    if c.threshold is not None:
        out["threshold"] = float(c.threshold)
    return out


def _conditions(s: dict[str, Any], obs: Observed) -> None:
    svc, now = obs.service, obs.now
    stable = s.get("stableVersion")
    if stable is None:
        set_condition(s, "Ready", False, "NoVersion", "the alias is not set and no version is pinned"
                      if obs.target is None else "deploying the first version", now)
    elif s.get("phase") == FAILED:
        set_condition(s, "Ready", False, "StableFailed", f"version {stable} does not serve", now)
    elif svc is not None and (svc.stable_url or (svc.latest_ready and svc.applied.canary is None)):
        set_condition(s, "Ready", True, "Serving", f"version {stable} serves", now)
    else:
        set_condition(s, "Ready", False, "Starting", f"version {stable} is starting", now)
    if s.get("phase") == PROGRESSING:
        set_condition(s, "Progressing", True, "Canary", f"version {s['canaryVersion']} at step"
                      f" {s['currentStep'] + 1} ({s['canaryTrafficPercent']}% of traffic)", now)
    elif s.get("phase") == ROLLING_BACK:
        set_condition(s, "Progressing", True, "RollingBack", (s.get("lastRollback") or {}).get("reason", ""), now)
    else:
        set_condition(s, "Progressing", False, "Idle", "", now)


def _serving(s: dict[str, Any]) -> None:
    """``status.serving``: what serves, as `kubectl get modeldeployments` shows it (``v3``, ``v4 20%``)."""
    serving = {}
    if s.get("stableVersion"):
        serving["stable"] = f"v{s['stableVersion']}"
    if s.get("phase") == PROGRESSING and s.get("canaryVersion"):
        serving["canary"] = f"v{s['canaryVersion']} {s.get('canaryTrafficPercent', 0)}%"
    if serving:
        s["serving"] = serving
    else:
        s.pop("serving", None)


def _derived(s: dict[str, Any], spec: ModelDeploymentSpec | None, obs: Observed | None) -> list[Any]:
    """The actions the recorded status implies; each is a no-op when already done."""
    actions: list[Any] = []
    desired = desired_service(s)
    if desired is not None and (obs is None or obs.service is None or not obs.service.serves(desired)):
        actions.append(ApplyService(desired))
    reverting = spec is not None and s.get("phase") == ROLLING_BACK and _revert_pending(spec, s)
    if (spec is not None and obs is not None and _follows_alias(spec) and obs.alias != s.get("aliasVersion")
            and not reverting):  # the revert records its own move (and one made meanwhile, as external)
        actions.append(RecordAliasMove(spec.model.alias, obs.alias, s.get("aliasVersion")))
    if reverting:
        last = s["lastRollback"]
        actions.append(RevertAlias(spec.model.alias, last["version"], s["stableVersion"], last["reason"],
                                   last["time"]))
    for entry in s.get("history") or []:
        if entry["seq"] > s.get("notifiedSeq", 0):
            actions.append(Notify(dict(entry)))
    return actions
