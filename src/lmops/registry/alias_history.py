"""The alias history as a person reads it: a table per alias in the registered model's description.

The history itself stays where lmops.registry.aliases keeps it (the ``lmops.alias.<alias>.history`` tag on
the registered model: JSON, the record promote and rollback act on); this only renders it, after every
move, into the description the MLflow UI shows on the model's page.
"""

from __future__ import annotations

import json
from typing import Any

INTRO = "Language models registered by lmops (one version per variant)."
HISTORY_PREFIX, HISTORY_SUFFIX = "lmops.alias.", ".history"
COLUMNS = ("at", "action", "version", "previous", "by", "reason")


def histories(tags: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """alias -> its recorded moves, from the registered model's tags (unreadable ones left out)."""
    out = {}
    for key, raw in sorted(tags.items()):
        if key.startswith(HISTORY_PREFIX) and key.endswith(HISTORY_SUFFIX):
            try:
                moves = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(moves, list):
                out[key[len(HISTORY_PREFIX):-len(HISTORY_SUFFIX)]] = moves
    return out


def markdown(by_alias: dict[str, list[dict[str, Any]]]) -> str:
    """The registered model's description: the intro, then one table per alias, latest move first."""
    parts = [INTRO]
    for alias, moves in by_alias.items():
        parts += ["", f"### Alias `{alias}`", "", "| " + " | ".join(COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        for move in reversed(moves):
            reason = move.get("reason") or move.get("note") or ""
            cells = {**move, "reason": reason, "version": _version(move.get("version")),
                     "previous": _version(move.get("previous"))}
            parts.append("| " + " | ".join(_cell(cells.get(c)) for c in COLUMNS) + " |")
    return "\n".join(parts) + "\n"


def publish(client, name: str) -> None:
    """Render the alias histories of model ``name`` into its description."""
    tags = client.get_registered_model(name).tags or {}
    client.update_registered_model(name, description=markdown(histories(tags)))


def _version(v: Any) -> str:
    return "-" if v in (None, "", "None") else f"v{v}"


def _cell(value: Any) -> str:
    """One table cell: no line breaks or pipes (they would end the row)."""
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
