"""``lmops registry prune NAME --keep N``: retire old model versions, never one that something still points at.

Kept: the newest ``keep`` versions, and every version that is
- held by an alias (``champion``, ``candidate``, ...),
- a rollback target: on an alias's holder stack (lmops.registry.aliases), where ``lmops rollback`` and the
  operator's automatic rollback would send traffic back to,
- named by a ModelDeployment's status (stable, canary, previous) on the cluster, when one is reachable.
The others are archived (tag ``lmops.archived`` and MLflow's ``Archived`` stage; the artifacts stay) or,
with ``delete``, deleted with their run's artifacts when no remaining version shares that run (lmops
registers one run per variant and reuses it when the same content is registered again).
``dry_run`` returns the same plan and changes nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from lmops.registry.aliases import holder_stack, now_iso, read_history
from lmops.registry.server import connect, refused, validate_name
from lmops.registry.tracking import RegistryError

ARCHIVED_TAG = "lmops.archived"


@dataclass
class PrunePlan:
    name: str
    keep: list[str] = field(default_factory=list)  # newest first
    protected: dict[str, list[str]] = field(default_factory=dict)  # version -> why it must stay
    retire: list[str] = field(default_factory=list)  # archive or delete, newest first
    action: str = "archive"
    done: bool = False

    def lines(self) -> list[str]:
        verb = {"archive": "archive", "delete": "delete"}[self.action]
        out = [f"model {self.name!r}: keeping the newest {len(self.keep)}: {', '.join(self.keep) or '-'}"]
        out += [f"  version {v}: kept ({'; '.join(why)})" for v, why in sorted(self.protected.items(), key=_num)]
        tense = "" if self.done else "would "
        out += [f"  version {v}: {tense}{verb}" + ("" if self.done else " (dry run)") for v in self.retire]
        if not self.retire:
            out.append("  nothing to prune")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "keep": self.keep, "protected": self.protected, self.action: self.retire,
                "done": self.done}


def _num(item) -> int:
    return int(item[0]) if str(item[0]).isdigit() else 0


def deployment_references(name: str, client=None) -> dict[str, list[str]]:
    """Versions of ``name`` that ModelDeployments' statuses name (stable, canary, previous), with where."""
    from lmops import kube
    from lmops.crd import API_VERSION

    refs: dict[str, list[str]] = {}
    objects, _ = kube.list_objects(API_VERSION, "ModelDeployment", client=client)
    for md in objects:
        if ((md.get("spec") or {}).get("model") or {}).get("name") != name:
            continue
        status, meta = md.get("status") or {}, md["metadata"]
        for role in ("stable", "canary", "previous"):
            version = status.get(f"{role}Version")
            if version:
                refs.setdefault(str(version), []).append(
                    f"{role} of ModelDeployment {meta.get('namespace')}/{meta['name']}")
    return refs


def plan(client, server: str, name: str, keep: int, deployments: dict[str, list[str]] | None = None,
         delete: bool = False) -> PrunePlan:
    validate_name(name)
    if keep < 1:
        raise RegistryError(f"--keep must be at least 1 (got {keep}): the newest version always stays")
    with refused(f"model {name!r}: listing versions", server):
        model = client.get_registered_model(name)
        versions = sorted({str(v.version): v for v in client.search_model_versions(f"name='{name}'")}.values(),
                          key=lambda v: -int(v.version))
    protected: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        protected.setdefault(str(version), []).append(f"alias {alias!r}")
    for alias in _aliases_with_history(model):
        stack = holder_stack(read_history(client, name, alias))
        for version in stack[:-1]:  # the last is the current holder (already protected by its alias)
            protected.setdefault(version, []).append(f"rollback target of alias {alias!r}")
    for version, why in (deployments or {}).items():
        protected.setdefault(version, []).extend(why)
    newest = [str(v.version) for v in versions[:keep]]
    out = PrunePlan(name, newest, action="delete" if delete else "archive")
    existing = {str(v.version) for v in versions}
    out.protected = {v: why for v, why in protected.items() if v in existing and v not in newest}
    out.retire = [str(v.version) for v in versions[keep:] if str(v.version) not in protected
                  and (delete or (v.tags or {}).get(ARCHIVED_TAG) is None)]
    return out


def _aliases_with_history(model) -> list[str]:
    prefix, suffix = "lmops.alias.", ".history"
    return [k[len(prefix):-len(suffix)] for k in (model.tags or {}) if k.startswith(prefix) and k.endswith(suffix)]


def apply(client, server: str, p: PrunePlan) -> PrunePlan:
    if p.action == "delete":
        _delete(client, server, p)
    else:
        for version in p.retire:
            with refused(f"model {p.name!r} version {version}: archiving", server):
                client.set_model_version_tag(p.name, version, ARCHIVED_TAG, now_iso())
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated in MLflow 3, still shown
                    client.transition_model_version_stage(p.name, version, "Archived")
    p.done = True
    return p


def _delete(client, server: str, p: PrunePlan) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    retired = set(p.retire)
    with refused(f"model {p.name!r}: listing versions", server):
        versions = client.search_model_versions(f"name='{p.name}'")
    runs_left = {v.run_id for v in versions if str(v.version) not in retired and v.run_id}
    for v in versions:
        if str(v.version) not in retired:
            continue
        with refused(f"model {p.name!r} version {v.version}: deleting", server):
            client.delete_model_version(p.name, str(v.version))
            if v.run_id and v.run_id not in runs_left:
                runs_left.add(v.run_id)  # a run shared by two retired versions is deleted once
                run = client.get_run(v.run_id)
                get_artifact_repository(run.info.artifact_uri, tracking_uri=server).delete_artifacts()
                client.delete_run(v.run_id)


def prune(tracking_uri: str | None, name: str, keep: int, *, dry_run: bool = False, delete: bool = False,
          deployments: dict[str, list[str]] | None = None, attempts: int = 2) -> PrunePlan:
    server, client = connect(tracking_uri, attempts=attempts)
    p = plan(client, server, name, keep, deployments, delete)
    return p if dry_run else apply(client, server, p)
