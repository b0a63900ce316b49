"""The webhook receiver with a real MLflow server sending registry webhooks, and forged/replayed/stale requests."""

from __future__ import annotations

import json
import queue
import time
import uuid

import pytest
import requests

from lmops.operator.webhook import DELIVERY_ID, SIGNATURE, TIMESTAMP, Verifier, WebhookServer, sign

SECRET = "s3cret-for-tests"


class Recording(Verifier):
    """Keeps each raw delivery (to replay it) before verifying it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.raw = []

    def verify(self, headers, body):
        self.raw.append(({k: headers.get(k) for k in (DELIVERY_ID, TIMESTAMP, SIGNATURE, "Content-Type")}, body))
        return super().verify(headers, body)


@pytest.fixture
def receiver():
    events = queue.Queue()
    srv = WebhookServer("127.0.0.1", 0, Recording(SECRET, max_age_s=60), events.put).start()
    yield srv, events
    srv.stop()


def post(srv, headers, body: bytes):
    return requests.post(srv.url, data=body, headers=headers, timeout=5)


def signed(body: str, *, secret=SECRET, ts=None, delivery=None):
    delivery, ts = delivery or str(uuid.uuid4()), str(int(ts if ts is not None else time.time()))
    return {DELIVERY_ID: delivery, TIMESTAMP: ts, SIGNATURE: sign(secret, delivery, ts, body)}, body.encode()


def test_real_mlflow_deliveries_are_accepted_and_replays_refused(mlflow_server, receiver):
    from mlflow import MlflowClient

    srv, events = receiver
    client = MlflowClient(mlflow_server)
    name = f"wh-{uuid.uuid4().hex[:6]}"
    hook = client.create_webhook(name=name, url=srv.url, secret=SECRET,
                                 events=["model_version_alias.created", "model_version.created"])
    try:
        client.create_registered_model(name)
        run = client.create_run("0")
        v = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        client.set_registered_model_alias(name, "champion", v.version)
        got = [events.get(timeout=20), events.get(timeout=20)]
    finally:
        client.delete_webhook(hook.webhook_id)
    alias_events = [e for e in got if e.entity == "model_version_alias"]
    assert len(alias_events) == 1 and (alias_events[0].model, alias_events[0].alias, alias_events[0].version) == \
        (name, "champion", str(v.version))
    assert srv.accepted == 2 and srv.rejected == 0
    headers, body = srv.verifier.raw[-1]
    r = post(srv, headers, body)  # the same delivery again
    assert r.status_code == 409 and "already received" in r.json()["error"]
    assert events.empty()


@pytest.mark.parametrize("case,status", [("wrong secret", 401), ("altered body", 401), ("stale", 401),
                                         ("future", 401), ("unsigned", 400), ("not json", 400)])
def test_forged_and_stale_deliveries_are_rejected(receiver, case, status):
    srv, events = receiver
    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": "m", "alias": "champion", "version": "9"}})
    if case == "wrong secret":
        headers, raw = signed(body, secret="guess")
    elif case == "altered body":
        headers, _ = signed(body)
        raw = body.replace('"9"', '"1"').encode()
    elif case == "stale":
        headers, raw = signed(body, ts=time.time() - 3600)
    elif case == "future":
        headers, raw = signed(body, ts=time.time() + 3600)
    elif case == "unsigned":
        headers, raw = signed(body)
        headers.pop(SIGNATURE)
    else:
        headers, raw = signed("{not json")
    r = post(srv, headers, raw)
    assert r.status_code == status, r.text
    assert events.empty() and srv.accepted == 0


def test_valid_delivery_and_probes(receiver):
    srv, events = receiver
    headers, raw = signed(json.dumps({"entity": "model_version_alias", "action": "created",
                                      "data": {"name": "m", "alias": "champion", "version": 3}}))
    assert post(srv, headers, raw).status_code == 200
    e = events.get(timeout=1)
    assert (e.model, e.alias, e.version) == ("m", "champion", "3")
    base = srv.url.rsplit("/mlflow", 1)[0]
    assert requests.get(base + "/healthz", timeout=5).ok and requests.get(base + "/readyz", timeout=5).ok


def test_seen_ids_are_forgotten_once_too_old_to_pass():
    now = [1000.0]
    v = Verifier(SECRET, max_age_s=60, clock=lambda: now[0])
    headers, raw = signed("{}", ts=now[0], delivery="d1")
    v.verify(headers, raw)
    now[0] += 61
    assert v._seen == {"d1": 1000.0}
    headers2, raw2 = signed("{}", ts=now[0], delivery="d2")
    v.verify(headers2, raw2)
    assert list(v._seen) == ["d2"]
