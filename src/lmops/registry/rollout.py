"""What the operator reads and writes in the registry during a rollout (idempotent, each call alone).

- ``alias_version``: where an alias points now (the poll that is the truth; webhooks only wake it)
- ``revert_alias``:  move the alias off a rejected version, only if it is still there
- ``record_outcome``: a rollout outcome as tags on the version (same tags for the same history entry)
"""

from __future__ import annotations

from typing import Any

from lmops.registry.aliases import move_alias, now_iso
from lmops.registry.server import _model_exists, connect, get_alias, refused

OUTCOME_PREFIX = "lmops.rollout"


def alias_version(tracking_uri: str | None, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None (alias not set, or the model not registered yet)."""
    server, client = connect(tracking_uri, attempts=2)
    with refused(f"model {name!r}: reading alias {alias!r}", server):
        if not _model_exists(client, name):
            return None
    mv = get_alias(client, server, name, alias)
    return None if mv is None else str(mv.version)


def revert_alias(tracking_uri: str | None, name: str, alias: str, from_version: str, to_version: str,
                 reason: str) -> bool:
    """Point ``alias`` back at ``to_version`` if it still points at ``from_version``; True when moved.

    The move is recorded in the alias history (action ``rollback``) like `lmops rollback`'s, and the
    rejected version is tagged with when and why."""
    server, client = connect(tracking_uri, attempts=2)
    current = get_alias(client, server, name, alias)
    if current is None or str(current.version) != str(from_version):
        return False  # someone moved it meanwhile (or we already did): theirs is the newer intent
    move_alias(client, server, name, alias, str(to_version), action="rollback", reason=reason)
    with refused(f"model {name!r} version {from_version}: recording the rollback", server):
        client.set_model_version_tag(name, str(from_version), f"lmops.alias.{alias}.rolled_back_at", now_iso())
        client.set_model_version_tag(name, str(from_version), f"lmops.alias.{alias}.rollback_reason", reason[:5000])
    return True


def record_outcome(tracking_uri: str | None, name: str, entry: dict[str, Any], deployment: str) -> None:
    """Tags on the entry's version: ``lmops.rollout.<outcome>`` = reason, plus the last outcome and where."""
    server, client = connect(tracking_uri, attempts=2)
    version = str(entry["version"])
    tags = {f"{OUTCOME_PREFIX}.outcome": entry["outcome"], f"{OUTCOME_PREFIX}.reason": entry.get("reason", "")[:5000],
            f"{OUTCOME_PREFIX}.at": entry["time"], f"{OUTCOME_PREFIX}.deployment": deployment,
            f"{OUTCOME_PREFIX}.{entry['outcome'].lower()}": entry.get("reason", "")[:5000]}
    with refused(f"model {name!r} version {version}: recording rollout outcome {entry['outcome']}", server):
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
