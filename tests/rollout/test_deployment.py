"""lmops.rollout.deployment: the canary state machine, table-driven, and killed at every step.

``World`` plays what the operator acts on (the InferenceService as KServe reports it, the alias, the
Events/tags sink) with plain values, and the operator loop: observe -> decide -> record -> act.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field

import pytest

from lmops.crd import parse_deployment
from lmops.rollout import (ApplyService, DesiredService, GateInputs, Notify, Observed, RecordAliasMove,
                           RevertAlias, ServiceState, decide, desired_service, invalid_spec, needs_gates)
from lmops.crd import SpecError

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
GOOD = GateInputs(requests=20, errors=0, p95_ms=100, canary_bpb=2.0, stable_bpb=2.0)


def spec(**rollout):
    body = {"model": {"name": "m"}, "rollout": {"steps": [{"trafficPercent": 10, "pauseSeconds": 5},
                                                          {"trafficPercent": 50, "pauseSeconds": 5}],
                                                "gates": {"readyTimeoutSeconds": 30, "latencyP95Ms": 500,
                                                          "qualityProbe": {"texts": ["x"], "maxRegression": 0.1}},
                                                **rollout}}
    return parse_deployment(body)


@dataclass
class World:
    """What the operator observes and acts on. ``broken``: versions that never get ready;
    ``gates``: the measurement per canary version."""

    alias: str | None = None
    pinned: str | None = None
    applied: DesiredService | None = None
    ready: bool = False
    broken: set = field(default_factory=set)
    gates: dict = field(default_factory=dict)
    notified: dict = field(default_factory=dict)  # seq -> entry, as Events named by seq would be
    moves: list = field(default_factory=list)  # the alias history: (previous, version), as MLflow's tag keeps it
    applies: int = 0
    now: dt.datetime = T0

    def observe(self, sp, status) -> Observed:
        svc = None
        if self.applied is not None:
            # KServe's rollback (canaryTrafficPercent 0): the rolled-out revision serves, the canary is stopped
            parked = self.applied.canary is not None and self.applied.canary_percent == 0
            failed = (self.applied.stable if parked else self.applied.serving) in self.broken
            svc = ServiceState(self.applied, True, self.ready and not failed,
                               "model failed to load" if failed else None,
                               canary_url="http://c" if self.applied.canary else None, stable_url="http://s")
        obs = Observed(self.now, self.pinned or self.alias, None if self.pinned else self.alias, svc)
        if needs_gates(sp, status, svc, self.now):
            obs = Observed(obs.now, obs.target, obs.alias, svc, self.gates.get(status["canaryVersion"], GOOD))
        return obs

    def act(self, decision) -> None:
        for a in decision.actions:
            if isinstance(a, ApplyService):
                if a.desired != self.applied:
                    self.applies += 1
                    self.ready = self.applied is not None and a.desired.serving == self.applied.serving and self.ready
                self.applied = a.desired
            elif isinstance(a, RecordAliasMove):
                top = self.moves[-1][1] if self.moves else None
                if top != a.version:  # record_seen_move: only a move the history does not end with
                    self.moves.append((top if top is not None else a.last_seen, a.version))
                decision.status["aliasVersion"] = a.version
            elif isinstance(a, RevertAlias):
                if self.alias in (a.from_version, a.to_version):
                    if self.alias == a.from_version or self.moves[-1][1] != a.to_version:
                        self.moves.append((a.from_version, a.to_version))
                    self.alias = a.to_version
                decision.status["lastRollback"] = {**decision.status["lastRollback"], "aliasReverted": True}
            elif isinstance(a, Notify):
                self.notified.setdefault(a.entry["seq"], a.entry)
        decision.status["notifiedSeq"] = decision.notified_seq

    def tick(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)
        self.ready = True  # a revision gets ready one tick after it was created


def run(world: World, sp, status=None, steps=40, crash_at=None):
    """The operator loop; ``crash_at``: at that iteration the decision is recorded but not acted on and the
    operator restarts (a fresh decide from the recorded status). Returns the final status and every decision."""
    status = status or {}
    decisions = []
    for i in range(steps):
        d = decide(sp, status, world.observe(sp, status), generation=1)
        decisions.append(d)
        recorded = copy.deepcopy(d.status)  # written to the API server before acting
        if i == crash_at:
            again = decide(sp, recorded, world.observe(sp, recorded), generation=1)
            assert [type(a) for a in again.actions] == [type(a) for a in d.actions]
            assert again.actions == d.actions, "a restarted operator derives the same actions"
            assert again.status["history"] == recorded["history"], "and does not decide again"
            status = recorded
            continue
        world.act(d)
        status = d.status
        world.tick(max(1.0, min(d.requeue_after or 1.0, 5.0)))
    return status, decisions


def outcomes(status):
    return [(e["version"], e["outcome"]) for e in status.get("history", [])]


def test_first_version_is_deployed_directly():
    w = World(alias="1")
    status, _ = run(w, spec(), steps=3)
    assert status["phase"] == "Stable" and status["stableVersion"] == "1"
    assert outcomes(status) == [("1", "Deployed")]
    assert w.applied == DesiredService("1") and w.applies == 1
    assert sorted(w.notified) == [1]
    assert [c["status"] for c in status["conditions"] if c["type"] == "Ready"] == ["True"]


def test_nothing_to_serve_without_alias():
    status, decisions = run(World(), spec(), steps=2)
    assert "phase" not in status and decisions[-1].actions == []
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "NoVersion"


def test_good_canary_walks_the_steps_and_is_promoted_once():
    w = World(alias="1")
    status, _ = run(w, spec(), steps=3)
    w.alias = "2"
    seen = []
    for _ in range(30):
        d = decide(spec(), status, w.observe(spec(), status), 1)
        seen.append((d.status["phase"], d.status.get("canaryTrafficPercent")))
        w.act(d)
        status = d.status
        w.tick(1)
    assert ("Progressing", 10) in seen and ("Progressing", 50) in seen
    assert status["phase"] == "Stable" and status["stableVersion"] == "2" and status["previousVersion"] == "1"
    assert outcomes(status) == [("1", "Deployed"), ("2", "CanaryStarted"), ("2", "Promoted")]
    assert w.applied == DesiredService("2") and w.alias == "2"
    assert {r["gate"] for r in status["gateResults"]} == {"errorRate", "latencyP95", "quality"}
    assert "canaryVersion" not in status and status["canaryTrafficPercent"] == 0


def test_canary_service_spec():
    s = {"phase": "Progressing", "stableVersion": "1", "canaryVersion": "2", "canaryTrafficPercent": 10}
    assert desired_service(s) == DesiredService("1", "2", 10)
    assert desired_service({"phase": "RollingBack", "stableVersion": "1"}) == DesiredService("1")
    assert desired_service({}) is None


@pytest.mark.parametrize("case,world_kw,rollout,gate,reason", [
    ("does not load", {"broken": {"2"}}, {}, "ready", "did not start: model failed to load"),
    ("scores worse", {"gates": {"2": GateInputs(20, 0, 100, canary_bpb=3.0, stable_bpb=2.0)}}, {}, "quality",
     "+50.0%"),
    ("errors", {"gates": {"2": GateInputs(20, 5, 100, 2.0, 2.0)}}, {}, "errorRate", "error rate 0.250"),
    ("slow", {"gates": {"2": GateInputs(20, 0, 900, 2.0, 2.0)}}, {}, "latencyP95", "p95 latency 900"),
    ("probe failed", {"gates": {"2": GateInputs(20, 0, 100, probe_error="503 not ready")}}, {}, "quality",
     "503 not ready"),
    ("too few requests", {"gates": {"2": GateInputs(1, 0, 100, 2.0, 2.0)}}, {"gates": {"minRequests": 10}},
     "errorRate", "only 1 requests"),
])
def test_bad_canary_is_rolled_back_traffic_and_alias(case, world_kw, rollout, gate, reason):
    sp = spec(**rollout) if rollout else spec()
    if rollout:  # keep the probe when overriding gates
        sp = spec(gates={"readyTimeoutSeconds": 30, "qualityProbe": {"texts": ["x"]}, **rollout["gates"]})
    w = World(alias="1", **world_kw)
    status, _ = run(w, sp, steps=3)
    w.alias = "2"
    status, _ = run(w, sp, status, steps=30)
    assert status["phase"] == "Stable" and status["stableVersion"] == "1", case
    assert w.alias == "1", "the alias is moved back"
    assert "rejectedVersion" not in status, "forgotten once the alias left it: promoting it again is a new decision"
    # KServe's rollback: canaryTrafficPercent 0, all traffic on the rolled-out revision of version 1; the
    # stable spec is not applied again (that would start a new revision of a version that already serves)
    assert w.applied == DesiredService("1", "2", 0), "traffic is back on the stable version"
    last = status["history"][-1]
    assert (last["version"], last["outcome"]) == ("2", "RolledBack")
    assert f"gate {gate} failed" in last["reason"] and reason in last["reason"], last["reason"]
    assert status["lastRollback"] == {"version": "2", "reason": last["reason"], "time": last["time"],
                                      "aliasReverted": True}
    assert [e["outcome"] for e in w.notified.values()].count("RolledBack") == 1
    assert w.moves == [(None, "1"), ("1", "2"), ("2", "1")], "every alias move, with its previous, once"


def test_alias_left_on_the_rejected_version_is_not_retried():
    sp = spec(**{"gates": {"qualityProbe": {"texts": ["x"]}}})
    sp = parse_deployment({**sp.model_dump(by_alias=True, exclude_none=True), "rollback": {"revertAlias": False}})
    w = World(alias="1", broken={"2"})
    status, _ = run(w, sp, steps=3)
    w.alias = "2"
    status, _ = run(w, sp, status, steps=20)
    assert w.alias == "2" and status["phase"] == "Stable" and status["rejectedVersion"] == "2"
    assert [o for v, o in outcomes(status) if v == "2"] == ["CanaryStarted", "RolledBack"]
    w.alias, w.broken = "3", set()
    status, _ = run(w, sp, status, steps=30)
    assert status["stableVersion"] == "3" and "rejectedVersion" not in status


def test_failure_limit_tolerates_failures():
    bad = {"2": GateInputs(20, 5, 100, 2.0, 2.0)}
    w = World(alias="1", gates=bad)
    sp = spec(failureLimit=1)
    status, _ = run(w, sp, steps=3)
    w.alias = "2"
    failures_seen = []
    for _ in range(40):
        d = decide(sp, status, w.observe(sp, status), 1)
        failures_seen.append((d.status["phase"], d.status.get("failures")))
        w.act(d)
        status = d.status
        w.tick(1)
    assert ("Progressing", 1) in failures_seen, "the first failure is tolerated"
    assert status["phase"] == "Stable" and outcomes(status)[-1] == ("2", "RolledBack")


def test_ready_timeout():
    w = World(alias="1")
    status, _ = run(w, spec(), steps=3)
    w.alias = "2"
    d = decide(spec(), status, w.observe(spec(), status), 1)
    w.act(d)
    status = d.status
    w.now += dt.timedelta(seconds=31)  # not ready (no tick), past readyTimeoutSeconds
    d = decide(spec(), status, w.observe(spec(), status), 1)
    assert d.status["phase"] == "RollingBack" and "not ready within 30s" in d.status["lastRollback"]["reason"]


@pytest.mark.parametrize("new_target,outcome", [("1", [("2", "Aborted")]),
                                                ("3", [("2", "Aborted"), ("3", "CanaryStarted")])])
def test_alias_moved_during_canary(new_target, outcome):
    w = World(alias="1")
    status, _ = run(w, spec(), steps=3)
    w.alias = "2"
    status, _ = run(w, spec(), status, steps=2)
    assert status["phase"] == "Progressing"
    w.alias = new_target
    d = decide(spec(), status, w.observe(spec(), status), 1)
    assert outcomes(d.status)[-len(outcome):] == outcome
    assert (d.status.get("canaryVersion") or "1") == new_target


def test_pinned_version_is_a_canary_and_never_moves_the_alias():
    w = World(alias="1")
    status, _ = run(w, spec(), steps=3)
    w.pinned, w.broken = "2", {"2"}
    pinned = spec().model_dump(by_alias=True, exclude_none=True)
    pinned = parse_deployment({**pinned, "model": {**pinned["model"], "version": "2"}})
    status, ds = run(w, pinned, status, steps=20)
    assert status["stableVersion"] == "1" and status["rejectedVersion"] == "2" and w.alias == "1"
    assert not any(isinstance(a, RevertAlias) for d in ds for a in d.actions)


def test_no_steps_promotes_when_ready():
    sp = parse_deployment({"model": {"name": "m"}, "rollout": {"steps": []}})
    w = World(alias="1")
    status, _ = run(w, sp, steps=3)
    w.alias = "2"
    status, _ = run(w, sp, status, steps=5)
    assert outcomes(status)[-1] == ("2", "Promoted")


def test_stable_that_breaks_is_failed_then_replaced():
    w = World(alias="1", broken={"1"})
    status, _ = run(w, spec(), steps=3)
    assert status["phase"] == "Failed"
    w.alias, w.broken = "2", set()
    status, _ = run(w, spec(), status, steps=3)
    assert status["phase"] == "Stable" and status["stableVersion"] == "2"


def test_invalid_spec_keeps_serving():
    status = {"phase": "Stable", "stableVersion": "1", "notifiedSeq": 0}
    d = invalid_spec(status, SpecError("spec.rollout.steps[1].trafficPercent", "must rise"), 2, T0)
    cond = next(c for c in d.status["conditions"] if c["type"] == "SpecValid")
    assert cond["status"] == "False" and "spec.rollout.steps[1].trafficPercent" in cond["message"]
    assert d.actions == [ApplyService(DesiredService("1"))] and d.status["observedGeneration"] == 2


def test_history_is_bounded():
    sp = parse_deployment({"model": {"name": "m"}, "rollout": {"steps": []}, "historyLimit": 3})
    w = World(alias="1")
    status, _ = run(w, sp, steps=2)
    for v in range(2, 7):
        w.alias = str(v)
        status, _ = run(w, sp, status, steps=4)
    assert len(status["history"]) == 3 and status["history"][-1]["seq"] == 11
    assert sorted(w.notified) == list(range(1, 12)), "every entry was notified once, dropped ones included"


def scenario(world_kw, rollout=None):
    sp = spec(**(rollout or {}))
    w = World(alias="1", **world_kw)
    status, _ = run(w, sp, steps=3)
    w.alias = "2"
    return w, sp, status


@pytest.mark.parametrize("kind,world_kw", [("promote", {}), ("load failure", {"broken": {"2"}}),
                                           ("quality", {"gates": {"2": GateInputs(20, 0, 100, 3.0, 2.0)}})])
@pytest.mark.parametrize("crash_at", range(0, 16))
def test_killed_after_recording_before_acting(kind, world_kw, crash_at):
    """At every iteration: killed between writing status and acting, the restarted operator derives the same
    actions and ends where an uninterrupted one ends -- one promotion or one rollback, every entry notified."""
    w_ref, sp, status = scenario(world_kw)
    ref, _ = run(w_ref, sp, copy.deepcopy(status), steps=30)
    w, sp, status = scenario(world_kw)
    final, _ = run(w, sp, copy.deepcopy(status), steps=31, crash_at=crash_at)
    assert outcomes(final) == outcomes(ref)
    assert (final["phase"], final["stableVersion"]) == (ref["phase"], ref["stableVersion"])
    assert (w.alias, w.applied) == (w_ref.alias, w_ref.applied)
    assert [e["outcome"] for e in w.notified.values()] == [e["outcome"] for e in w_ref.notified.values()]
    assert sum(o == "Promoted" for _, o in outcomes(final)) == (kind == "promote")


def test_status_patch_removes_and_leaves_out_empty_strings():
    from lmops.rollout.status import status_patch

    old = {"phase": "Progressing", "canaryVersion": "2", "conditions": [{"type": "A", "message": "x"}]}
    new = {"phase": "Stable", "conditions": [{"type": "A", "message": "", "reason": "R"}], "canaryVersion": ""}
    assert status_patch(old, new) == {"phase": "Stable", "canaryVersion": None,
                                      "conditions": [{"type": "A", "reason": "R"}]}


def test_error_rate_without_requests_is_recorded_not_judged():
    from lmops.rollout.deployment import evaluate_gates

    (check,) = evaluate_gates(parse_deployment({"model": {"name": "m"}}), GateInputs())
    assert check.passed and "no requests" in check.message


def test_alias_already_back_still_gets_its_records():
    """Killed after moving the alias back but before its MLflow records: the alias is where it should be,
    yet RevertAlias is derived again (and writes only what is missing) until the status says it is done."""
    w, sp, status = scenario({"broken": {"2"}})
    for _ in range(10):
        d = decide(sp, status, w.observe(sp, status), 1)
        if any(isinstance(a, RevertAlias) for a in d.actions):
            break
        w.act(d)
        status = d.status
        w.tick(1)
    w.alias = "1"  # the revert's first write happened; the kill came before the rest
    status = d.status
    again = decide(sp, status, w.observe(sp, status), 1)
    assert again.status["phase"] == "RollingBack", "not done while the rollback is not recorded"
    assert [a for a in again.actions if isinstance(a, RevertAlias)] == \
        [RevertAlias("champion", "2", "1", status["lastRollback"]["reason"], status["lastRollback"]["time"])]
    final, _ = run(w, sp, status, steps=5)
    assert final["phase"] == "Stable" and final["lastRollback"]["aliasReverted"] is True


def test_serving_says_what_serves_and_the_last_rollback_stays_with_its_version():
    w, sp, status = scenario({"gates": {"2": GateInputs(20, 0, 100, 3.0, 2.0)}})
    seen = set()
    for _ in range(30):
        d = decide(sp, status, w.observe(sp, status), 1)
        seen.add(tuple(sorted(d.status.get("serving", {}).items())))
        w.act(d)
        status = d.status
        w.tick(1)
    assert (("canary", "v2 10%"), ("stable", "v1")) in seen, seen
    assert status["serving"] == {"stable": "v1"}
    rolled_back = status["lastRollback"]
    w.alias = "3"
    status, _ = run(w, sp, status, steps=30)
    assert status["serving"] == {"stable": "v3"} and outcomes(status)[-1] == ("3", "Promoted")
    assert status["lastRollback"] == rolled_back, "the last rollback keeps its own version and time"
    assert w.moves[-2:] == [("2", "1"), ("1", "3")]
