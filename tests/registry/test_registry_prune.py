"""`lmops registry prune` on the real MLflow server: what an alias, a rollback or a ModelDeployment points at
stays; the rest is archived, or deleted with its artifacts; --dry-run changes nothing."""

from __future__ import annotations

import json
import uuid

import pytest

from lmops.cli import main
from lmops.registry import RegistryError
from lmops.registry.aliases import move_alias
from lmops.registry.prune import ARCHIVED_TAG, prune


@pytest.fixture
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server, registry_uri=mlflow_server)


def seven_versions(client, mlflow_server, tmp_path) -> str:
    """7 versions, each with its own run and artifact, except version 6, which reuses version 5's run (as
    lmops does when the same content is registered again). champion: 1 then 2; candidate: 7."""
    name = f"prune-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    exp = client.create_experiment(name)
    (tmp_path / "weights.bin").write_bytes(b"w" * 100)
    run_id = None
    for i in range(1, 8):
        if i != 6:
            run_id = client.create_run(exp).info.run_id
            client.log_artifact(run_id, str(tmp_path / "weights.bin"), "hf_model")
        source = f"{client.get_run(run_id).info.artifact_uri}/hf_model"
        client.create_model_version(name, source, run_id=run_id)
    for v in ("1", "2"):  # champion: 1 then 2, so 1 is the rollback target
        move_alias(client, mlflow_server, name, "champion", v, action="promote")
    move_alias(client, mlflow_server, name, "candidate", "7", action="register")
    return name


def versions(client, name: str) -> dict[str, object]:
    return {str(v.version): v for v in client.search_model_versions(f"name='{name}'")}


def test_prune_keeps_what_is_referenced_archives_the_rest_and_dry_run_changes_nothing(
        client, mlflow_server, tmp_path, capsys):
    name = seven_versions(client, mlflow_server, tmp_path)
    deployed = {"3": ["stable of ModelDeployment ns/lm"], "4": ["previous of ModelDeployment ns/lm"]}
    dry = prune(mlflow_server, name, keep=2, dry_run=True, deployments=deployed)
    assert dry.keep == ["7", "6"] and dry.retire == ["5"] and not dry.done
    assert dry.protected == {"1": ["rollback target of alias 'champion'"], "2": ["alias 'champion'"],
                             "3": ["stable of ModelDeployment ns/lm"], "4": ["previous of ModelDeployment ns/lm"]}
    assert not any(ARCHIVED_TAG in (v.tags or {}) for v in versions(client, name).values())  # nothing changed

    assert main(["registry", "prune", name, "--keep", "2", "--no-cluster", "--tracking-uri", mlflow_server]) == 0
    out = capsys.readouterr().out
    # without the cluster's ModelDeployments, 3 and 4 are no longer protected
    assert "version 5: archive\n" in out and "version 3: archive\n" in out and "version 1: kept (rollback" in out
    after = versions(client, name)
    archived = sorted(v for v, mv in after.items() if ARCHIVED_TAG in (mv.tags or {}))
    assert archived == ["3", "4", "5"] and after["5"].current_stage == "Archived"
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    again = prune(mlflow_server, name, keep=2, dry_run=True)
    assert again.retire == []  # archived versions are not archived twice


def test_prune_delete_removes_versions_and_their_artifacts_unless_a_run_is_shared(client, mlflow_server, tmp_path,
                                                                                  capsys):
    name = seven_versions(client, mlflow_server, tmp_path)
    before = versions(client, name)
    assert main(["registry", "prune", name, "--keep", "2", "--delete", "--no-cluster", "--json",
                 "--tracking-uri", mlflow_server]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["delete"] == ["5", "4", "3"] and result["done"]
    assert sorted(versions(client, name)) == ["1", "2", "6", "7"]
    for v in ("3", "4"):  # their runs: no artifacts left, deleted
        run = client.get_run(before[v].run_id)
        assert run.info.lifecycle_stage == "deleted" and client.list_artifacts(run.info.run_id) == []
    shared = client.get_run(before["5"].run_id)  # version 6 (kept) reuses version 5's run
    assert shared.info.lifecycle_stage == "active" and client.list_artifacts(shared.info.run_id, "hf_model")


def test_prune_refuses_keep_0_and_unknown_models(mlflow_server):
    with pytest.raises(RegistryError, match="at least 1"):
        prune(mlflow_server, "whatever", keep=0, dry_run=True)
    with pytest.raises(RegistryError, match="no-such-model"):
        prune(mlflow_server, "no-such-model", keep=1, dry_run=True)
