"""Status helpers shared by both resources: conditions (Kubernetes style), a bounded history, time."""

from __future__ import annotations

import datetime as dt
from typing import Any


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def seconds_since(s: str | None, now: dt.datetime) -> float:
    t = parse_time(s)
    return (now - t).total_seconds() if t else 0.0


def set_condition(status: dict[str, Any], type_: str, value: bool | None, reason: str, message: str,
                  now: dt.datetime, generation: int | None = None) -> None:
    """Upsert one condition; lastTransitionTime moves only when the status value changes."""
    text = "Unknown" if value is None else ("True" if value else "False")
    conditions = status.setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == type_), None)
    new = {"type": type_, "status": text, "reason": reason, "message": message,
           "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == text else iso(now)}
    if generation is not None:
        new["observedGeneration"] = generation
    if old is None:
        conditions.append(new)
    else:
        conditions[conditions.index(old)] = new


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def append_history(status: dict[str, Any], version: str, outcome: str, reason: str, now: dt.datetime,
                   limit: int) -> dict[str, Any]:
    """Add one entry with the next sequence number; the oldest fall off past ``limit``."""
    history = status.setdefault("history", [])
    seq = max([e["seq"] for e in history], default=status.get("notifiedSeq", 0)) + 1
    entry = {"seq": seq, "version": version, "time": iso(now), "outcome": outcome, "reason": reason}
    history.append(entry)
    del history[:-limit]
    return entry


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from ``old`` to ``new`` status: changed keys, and None for removed ones.

    Empty strings are left out (an absent field): the 1.20 API server stores an empty string in a custom
    resource's status as null and then refuses it against the schema's ``type: string``."""
    new = without_empty_strings(new)
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def without_empty_strings(value):
    if isinstance(value, dict):
        return {k: without_empty_strings(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [without_empty_strings(v) for v in value]
    return value
