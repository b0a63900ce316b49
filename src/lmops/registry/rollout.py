"""What the operator reads and writes in the registry during a rollout.

Every write here is idempotent and its values come from the operator's recorded status, so a retry
after a kill anywhere writes what is missing and nothing twice:

- ``alias_version``:  where an alias points now (the poll that is the truth; webhooks only wake it)
- ``record_seen``:    a move of the alias that the operator saw, into the alias history
- ``revert_alias``:   the alias back off a rejected version (unless someone moved it elsewhere), its
                      history entry, and the rejected version's rollback tags
- ``record_outcome``: a rollout outcome as tags on the version (same tags for the same history entry)
"""

from __future__ import annotations

from typing import Any

from lmops.failpoints import failpoint
from lmops.registry.aliases import move_alias, record_seen_move
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


def record_seen(tracking_uri: str | None, name: str, alias: str, version: str | None, last_seen: str | None) -> bool:
    """The alias history gains the move to ``version`` unless it already ends there; True when written."""
    server, client = connect(tracking_uri, attempts=2)
    return record_seen_move(client, server, name, alias, version, last_seen)


def revert_alias(tracking_uri: str | None, name: str, alias: str, from_version: str, to_version: str,
                 reason: str, at: str) -> bool:
    """Point ``alias`` back at ``to_version`` if it is on ``from_version`` (or already back: then the move's
    history entry is written if a kill left it out), and tag ``from_version`` with when (``at``, the
    decision's time) and why. A user who moved the alias elsewhere meanwhile wins: the alias stays,
    the tags are still written. True when the alias is (now) on ``to_version``."""
    server, client = connect(tracking_uri, attempts=2)
    current = get_alias(client, server, name, alias)
    back = current is not None and str(current.version) in (str(from_version), str(to_version))
    if back:
        move_alias(client, server, name, alias, str(to_version), action="rollback", reason=reason,
                   extra={"rejected": str(from_version)})
    failpoint("revert.history_written")
    _tag_missing(client, server, name, str(from_version), {f"lmops.alias.{alias}.rolled_back_at": at,
                                                           f"lmops.alias.{alias}.rollback_reason": reason[:5000]},
                 "recording the rollback")
    return back


def record_outcome(tracking_uri: str | None, name: str, entry: dict[str, Any], deployment: str) -> None:
    """Tags on the entry's version: ``lmops.rollout.<outcome>`` = reason, plus the last outcome and where."""
    server, client = connect(tracking_uri, attempts=2)
    reason = entry.get("reason", "")[:5000]
    tags = {f"{OUTCOME_PREFIX}.outcome": entry["outcome"], f"{OUTCOME_PREFIX}.reason": reason,
            f"{OUTCOME_PREFIX}.at": entry["time"], f"{OUTCOME_PREFIX}.deployment": deployment,
            f"{OUTCOME_PREFIX}.{entry['outcome'].lower()}": reason}
    _tag_missing(client, server, name, str(entry["version"]), tags, f"recording rollout outcome {entry['outcome']}")


def _tag_missing(client, server: str, name: str, version: str, tags: dict[str, str], what: str) -> None:
    """Write the tags whose value differs on the version (one read, then only what is missing)."""
    with refused(f"model {name!r} version {version}: {what}", server):
        have = client.get_model_version(name, version).tags or {}
        written = 0
        for key, value in tags.items():
            if have.get(key) != value:
                if written:
                    failpoint("tags.partly_written")
                client.set_model_version_tag(name, version, key, value)
                written += 1
