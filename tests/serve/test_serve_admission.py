"""The admission rules themselves, on a clock the test moves: token buckets per identity, token debt,
the queue bound; and how keys are read (file and environment, with clear errors)."""

from __future__ import annotations

import pytest

from lmops.config import ServeConfig
from lmops.serve.admission import Admission, Refusal, Ticket
from lmops.serve.auth import ApiKeyError, ApiKeys, load_keys, needs_key


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_is_a_bucket_per_identity_that_refills():
    clock = Clock()
    gate = Admission(ServeConfig(rate_limit_requests_per_minute=6), clock)
    tickets = [gate.admit("key:a") for _ in range(6)]
    assert all(isinstance(t, Ticket) for t in tickets)
    refused = gate.admit("key:a")
    assert isinstance(refused, Refusal) and refused.status == 429 and refused.retry_after_s == 10  # 6/min
    assert isinstance(gate.admit("key:b"), Ticket)  # another key has its own bucket
    clock.now += 10
    assert isinstance(gate.admit("key:a"), Ticket) and isinstance(gate.admit("key:a"), Refusal)


def test_tokens_per_minute_are_charged_after_generation_and_debt_refuses():
    clock = Clock()
    gate = Admission(ServeConfig(rate_limit_tokens_per_minute=600), clock)  # 10 tokens per second
    t = gate.admit("client:1.2.3.4")
    t.charge(900)  # a long answer: 300 tokens of debt
    t.release()
    refused = gate.admit("client:1.2.3.4")
    assert isinstance(refused, Refusal) and refused.status == 429 and "tokens per minute" in refused.message
    assert refused.retry_after_s == 31  # (300 + 1) tokens at 10/s
    clock.now += 31
    assert isinstance(gate.admit("client:1.2.3.4"), Ticket)


def test_admission_queue_is_bounded_and_released():
    gate = Admission(ServeConfig(max_queued_requests=2), Clock())
    a, b = gate.admit("x"), gate.admit("x")
    shed = gate.admit("y")
    assert isinstance(shed, Refusal) and shed.status == 503 and shed.retry_after_s == 1
    a.release()
    a.release()  # twice is once
    assert gate.in_flight == 1 and isinstance(gate.admit("y"), Ticket)


def test_keys_from_file_and_environment(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# ops\nsk-one\n\n  sk-two  \n")
    keys = load_keys(ServeConfig(api_key_file=str(f)), {"LMOPS_API_KEYS": "sk-env, ,sk-env2"})
    assert keys == ["sk-env", "sk-env2", "sk-one", "sk-two"]
    api = ApiKeys(keys)
    assert api.identify("Bearer sk-two") and api.identify(b"bearer sk-env")
    assert api.identify("Bearer sk-tw") is None and api.identify("sk-two") is None and api.identify(None) is None
    assert api.identify("Bearer sk-one") != api.identify("Bearer sk-two")  # per-key identities
    assert "sk-one" not in api.identify("Bearer sk-one")  # safe to log
    assert not ApiKeys(load_keys(ServeConfig(), {})).enabled


def test_a_server_container_gets_the_key_file_s_keys_not_its_path(tmp_path, monkeypatch):
    """A server container does not see deploy's files: the keys travel as $LMOPS_API_KEYS, and the config it
    reads names no file (which it would fail to read)."""
    from lmops.serve.container import server_keys

    monkeypatch.delenv("LMOPS_API_KEYS", raising=False)
    f = tmp_path / "keys"
    f.write_text("sk-one\nsk-two\n")
    serve, env = server_keys(ServeConfig(api_key_file=str(f)))
    assert serve.api_key_file is None and env == {"LMOPS_API_KEYS": "sk-one,sk-two"}
    assert load_keys(serve, env) == ["sk-one", "sk-two"]  # what the server in the container will read
    assert server_keys(ServeConfig()) == (ServeConfig(), {})
    with pytest.raises(ApiKeyError, match="cannot read it"):
        server_keys(ServeConfig(api_key_file=str(tmp_path / "missing")))


@pytest.mark.parametrize("content, error", [(None, "cannot read it"), ("# nothing\n\n", "holds no key"),
                                            ("sk-a\nsk b\n", "whitespace")])
def test_bad_key_files_are_clear_errors_that_never_show_a_key(tmp_path, content, error):
    f = tmp_path / "keys"
    if content is not None:
        f.write_text(content)
    with pytest.raises(ApiKeyError, match=error) as e:
        load_keys(ServeConfig(api_key_file=str(f)), {})
    assert "sk-a" not in str(e.value) and "sk b" not in str(e.value)


def test_which_paths_need_a_key():
    open_paths = ["/", "/metrics", "/v2/health/ready", "/v2/health/live", "/v2/models/m/ready", "/v1/models/m"]
    closed = ["/v1/models", "/v1/models/m:predict", "/v2/models/m/infer", "/v2/models/m", "/v1/completions",
              "/openai/v1/chat/completions", "/openai/v1/models/m", "/v2/models/m/generate"]
    assert [p for p in open_paths if needs_key(p)] == [] and [p for p in closed if not needs_key(p)] == []
