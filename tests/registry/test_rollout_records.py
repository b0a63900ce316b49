"""The operator's MLflow writes (lmops.registry.rollout) on a real MLflow server, killed between them.

Each kill is a real SIGKILL of a child process at a named failpoint (lmops.failpoints) between two writes;
the retry -- what a restarted operator does -- must leave exactly what one uninterrupted call leaves: the
alias where it should be, one history entry per move with its previous holder, every tag once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from lmops.registry import rollout
from lmops.registry.aliases import history_tag

AT = "2026-12-06T01:02:03Z"
REASON = "gate quality failed: bits per byte +37% (max +10%)"


@pytest.fixture
def model(mlflow_server):
    """A registered model with three versions (no files: these writes only touch the registry)."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    name = f"lm-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    run = client.create_run("0")
    for _ in range(3):
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    return client, name


def history(client, name: str) -> list[tuple]:
    raw = (client.get_registered_model(name).tags or {}).get(history_tag("champion"))
    return [(e["action"], e["previous"], e["version"]) for e in json.loads(raw or "[]")]


def killed_at(point: str, mlflow_server: str, call: str) -> None:
    """Run ``call`` (Python, with ``rollout`` and the constants imported) in a child that dies at ``point``."""
    code = f"from lmops.registry import rollout\nAT, REASON = {AT!r}, {REASON!r}\n{call}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LMOPS_FAILPOINT": point, "MLFLOW_TRACKING_URI": mlflow_server})
    assert proc.returncode == -signal.SIGKILL, f"the child was to die at {point}: {proc.returncode} {proc.stderr[-2000:]}"


def test_seen_moves_are_recorded_once_with_their_previous_holder(model, mlflow_server):
    client, name = model
    client.set_registered_model_alias(name, "champion", "1")  # MLflow's own client, as a user would
    assert rollout.record_seen(mlflow_server, name, "champion", "1", None)
    assert not rollout.record_seen(mlflow_server, name, "champion", "1", None), "already recorded: nothing written"
    client.set_registered_model_alias(name, "champion", "2")
    assert rollout.record_seen(mlflow_server, name, "champion", "2", "1")
    assert history(client, name) == [("external", None, "1"), ("external", "1", "2")]


@pytest.mark.parametrize("point", ["alias.moved", "revert.history_written", "tags.partly_written"])
def test_revert_killed_between_its_writes_is_completed_by_the_retry(model, mlflow_server, point):
    client, name = model
    client.set_registered_model_alias(name, "champion", "1")
    rollout.record_seen(mlflow_server, name, "champion", "1", None)
    client.set_registered_model_alias(name, "champion", "2")
    rollout.record_seen(mlflow_server, name, "champion", "2", "1")
    call = "rollout.revert_alias(None, {name!r}, 'champion', '2', '1', REASON, AT)".format(name=name)
    killed_at(point, mlflow_server, call)
    assert client.get_model_version_by_alias(name, "champion").version == "1", "the alias moved before the kill"
    assert rollout.revert_alias(mlflow_server, name, "champion", "2", "1", REASON, AT)
    assert rollout.revert_alias(mlflow_server, name, "champion", "2", "1", REASON, AT), "a second retry: no-op"
    assert history(client, name) == [("external", None, "1"), ("external", "1", "2"), ("rollback", "2", "1")]
    tags = client.get_model_version(name, "2").tags
    assert tags["lmops.alias.champion.rolled_back_at"] == AT and tags["lmops.alias.champion.rollback_reason"] == REASON


def test_revert_leaves_an_alias_someone_moved_elsewhere(model, mlflow_server):
    client, name = model
    client.set_registered_model_alias(name, "champion", "3")
    assert not rollout.revert_alias(mlflow_server, name, "champion", "2", "1", REASON, AT)
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    assert client.get_model_version(name, "2").tags["lmops.alias.champion.rollback_reason"] == REASON


def test_outcome_tags_killed_halfway_are_completed(model, mlflow_server):
    client, name = model
    entry = {"seq": 4, "version": "2", "time": AT, "outcome": "Promoted", "reason": "all gates passed"}
    killed_at("tags.partly_written", mlflow_server, f"rollout.record_outcome(None, {name!r}, {entry!r}, 'ns/md')")
    partial = client.get_model_version(name, "2").tags
    assert 1 <= sum(k.startswith("lmops.rollout.") for k in partial) < 5, partial
    rollout.record_outcome(mlflow_server, name, entry, "ns/md")
    tags = client.get_model_version(name, "2").tags
    assert {k: v for k, v in tags.items() if k.startswith("lmops.rollout.")} == {
        "lmops.rollout.outcome": "Promoted", "lmops.rollout.reason": "all gates passed", "lmops.rollout.at": AT,
        "lmops.rollout.deployment": "ns/md", "lmops.rollout.promoted": "all gates passed"}
