"""Aliases with a memory: guarded promotion, rollback to the previous holder, history as tags.

MLflow keeps only an alias's current version. The history of each alias lives in one tag on the
registered model, ``lmops.alias.<alias>.history``: a JSON list of moves (bounded). The holders form a
stack — a promotion pushes, a rollback pops — so rolling back twice after three promotions lands on
the first version. A move made outside lmops (the MLflow UI) is noticed at the next promote or
rollback and recorded as ``external``, so the stack stays true to what was actually served.

Order of writes: the alias moves first, then the history tag. A crash in between leaves an alias
whose move is missing from the history: a retry of the same move records it (it happened), any other
call records it as ``external`` -- never a history that claims a move that did not happen. The
operator records the moves it sees (``record_seen_move``) as they happen, so the previous holder of
every move is known, the first set included.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass
from typing import Any

from lmops.failpoints import failpoint
from lmops.registry import alias_history
from lmops.registry.server import get_alias, get_version, refused, validate_alias, validate_name
from lmops.registry.tracking import RegistryError
from lmops.registry.version_page import gate_reasons

GATE_PASSED = "lmops.gate.passed"


class PromotionRefused(RegistryError):
    """The version has no passing gate verdict and the promotion was not forced."""


def history_tag(alias: str) -> str:
    return f"lmops.alias.{alias}.history"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 — no passwd entry in some containers
        return "unknown"


def read_history(client, name: str, alias: str) -> list[dict[str, Any]]:
    tags = client.get_registered_model(name).tags or {}
    raw = tags.get(history_tag(alias))
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except json.JSONDecodeError:
        raise RegistryError(f"model {name!r}: tag {history_tag(alias)} is not valid JSON (edited by hand?)") from None
    return history if isinstance(history, list) else []


def holder_stack(history: list[dict[str, Any]]) -> list[str]:
    """Versions that held the alias, oldest first; the last is the current holder."""
    stack: list[str] = []
    for entry in history:
        version = str(entry.get("version"))
        if entry.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != version:
                stack.append(version)
        elif entry.get("action") == "unset":
            stack.clear()
        elif not stack or stack[-1] != version:
            stack.append(version)
    return stack


@dataclass
class AliasMove:
    name: str
    alias: str
    version: str
    previous: str | None
    action: str
    changed: bool

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


def move_alias(client, server: str, name: str, alias: str, version: str, *, action: str,
               reason: str | None = None, limit: int = 50, extra: dict[str, Any] | None = None) -> AliasMove:
    """Point ``alias`` at ``version`` and append the move to the alias history (no gate checks here).

    Idempotent: when the alias already points at ``version`` but the history does not say so (a move
    interrupted between its two writes, or one made outside lmops), the move is recorded now, once."""
    validate_name(name)
    validate_alias(alias)
    current = get_alias(client, server, name, alias)
    previous = current.version if current is not None else None
    with refused(f"model {name!r}: reading the history of alias {alias!r}", server):
        history = read_history(client, name, alias)
    top = _top(history)
    if previous == str(version):
        if top == str(version):
            return AliasMove(name, alias, str(version), previous, action, changed=False)
        entries = [_entry(action, version, top, reason, extra)]  # moved, never recorded: record it now
    else:
        entries = _external_moves(history, previous)
        with refused(f"model {name!r}: setting alias {alias!r} to version {version}", server):
            client.set_registered_model_alias(name, alias, str(version))
        failpoint("alias.moved")
        entries.append(_entry(action, version, previous, reason, extra))
    with refused(f"model {name!r}: recording the move of alias {alias!r} to version {version}", server):
        _write_history(client, name, alias, history + entries, limit)
    return AliasMove(name, alias, str(version), previous, action, changed=previous != str(version))


def record_seen_move(client, server: str, name: str, alias: str, version: str | None,
                     last_seen: str | None) -> bool:
    """Record a move of ``alias`` to ``version`` (None: removed) that someone else made -- MLflow's UI or
    client -- as seen by the operator, whose ``last_seen`` version is the previous holder when the history
    knows none (the first set). True when an entry was written; a move already recorded writes nothing."""
    with refused(f"model {name!r}: reading the history of alias {alias!r}", server):
        history = read_history(client, name, alias)
    top = _top(history)
    if top == (None if version is None else str(version)):
        return False
    previous = top if top is not None else last_seen
    if version is None:
        entry = {"action": "unset", "version": None, "previous": previous, "at": now_iso(),
                 "note": "alias removed outside lmops"}
    else:
        entry = {"action": "external", "version": str(version), "previous": previous, "at": now_iso(),
                 "note": "alias moved outside lmops (seen by the operator)"}
    with refused(f"model {name!r}: recording the move of alias {alias!r} to version {version}", server):
        _write_history(client, name, alias, history + [entry], 50)
    return True


def _top(history: list[dict[str, Any]]) -> str | None:
    stack = holder_stack(history)
    return stack[-1] if stack else None


def _entry(action: str, version: str, previous: str | None, reason: str | None,
           extra: dict[str, Any] | None) -> dict[str, Any]:
    return {"action": action, "version": str(version), "previous": previous, "at": now_iso(), "by": _user(),
            **({"reason": reason} if reason else {}), **(extra or {})}


def _external_moves(history: list[dict[str, Any]], current: str | None) -> list[dict[str, Any]]:
    """An entry for an alias move made outside lmops, when the current holder differs from the record."""
    top = _top(history)
    if current == top:
        return []
    if current is None:
        return [{"action": "unset", "version": None, "previous": top, "at": now_iso(), "note": "alias removed outside lmops"}]
    return [{"action": "external", "version": current, "previous": top, "at": now_iso(),
             "note": "alias moved outside lmops (noticed at the next lmops change)"}]


def _write_history(client, name: str, alias: str, history: list[dict[str, Any]], limit: int) -> None:
    client.set_registered_model_tag(name, history_tag(alias), json.dumps(history[-limit:], separators=(",", ":")))
    alias_history.publish(client, name)  # the same history as a table on the model's page


def promote(client, server: str, name: str, version: str, alias: str, *, force: bool = False,
            reason: str | None = None, limit: int = 50) -> AliasMove:
    """Set ``alias`` on a version whose gates passed; ``force`` needs a reason and records it on the version."""
    validate_name(name)
    validate_alias(alias)
    mv = get_version(client, server, name, version)
    passed = (mv.tags or {}).get(GATE_PASSED)
    if passed != "true" and not force:
        why = "no gate verdict" if passed is None else f"{GATE_PASSED}={passed}"
        first_fail = next((r for r in gate_reasons(mv) if r.startswith("FAIL")), None)
        raise PromotionRefused(
            f"refusing to promote model {name!r} version {version} to {alias!r}: {why}"
            + (f" ({first_fail})" if first_fail else "")
            + ". Use --force --reason \"...\" to override (recorded on the version).")
    if force and not (reason and reason.strip()):
        raise RegistryError(f"promote model {name!r} version {version} --force needs --reason \"...\" (it is recorded)")
    forced = force and passed != "true"
    if forced:
        # recorded before the alias moves: a forced promotion is never without its reason
        with refused(f"model {name!r} version {version}: recording the forced promotion", server):
            for key, value in {"lmops.promote.forced": "true", "lmops.promote.force_reason": reason.strip(),
                               "lmops.promote.forced_at": now_iso(), "lmops.promote.forced_by": _user(),
                               "lmops.promote.forced_alias": alias}.items():
                client.set_model_version_tag(name, str(version), key, value)
    move = move_alias(client, server, name, alias, str(version), action="promote", reason=reason, limit=limit,
                      extra={"forced": True} if forced else None)
    promoted_at = f"lmops.alias.{alias}.promoted_at"
    if move.changed or promoted_at not in (mv.tags or {}):  # a retry writes what a crash left out
        with refused(f"model {name!r} version {version}: tagging the promotion", server):
            client.set_model_version_tag(name, str(version), promoted_at, now_iso())
    return move


def rollback(client, server: str, name: str, alias: str, *, reason: str | None = None, limit: int = 50) -> AliasMove:
    """Move ``alias`` back to the version that held it before the current one."""
    validate_name(name)
    validate_alias(alias)
    current = get_alias(client, server, name, alias)
    if current is None:
        raise RegistryError(f"cannot roll back: alias {alias!r} is not set on model {name!r} ({server})")
    with refused(f"model {name!r}: reading the history of alias {alias!r}", server):
        history = read_history(client, name, alias)
    stack = holder_stack(history + _external_moves(history, current.version))
    if len(stack) < 2:
        raise RegistryError(f"cannot roll back alias {alias!r} of model {name!r}: no earlier holder recorded"
                            f" (current: version {current.version}; history tag {history_tag(alias)})")
    target = stack[-2]
    get_version(client, server, name, target)  # a deleted version: say so rather than dangle the alias
    why = reason or "rollback"
    move = move_alias(client, server, name, alias, target, action="rollback", reason=why, limit=limit)
    with refused(f"model {name!r}: recording the rollback on the versions", server):
        at = now_iso()
        client.set_model_version_tag(name, current.version, f"lmops.alias.{alias}.rolled_back_at", at)
        client.set_model_version_tag(name, current.version, f"lmops.alias.{alias}.rollback_reason", why)
        client.set_model_version_tag(name, target, f"lmops.alias.{alias}.restored_at", at)
    return move
