"""deploy target=local: a real server subprocess, readiness, smoke request, endpoint.json."""

from __future__ import annotations

import json
import os

import pytest
import requests

from lmops.config import config_from_dict
from lmops.serve.deploy import DeployError, deploy, stop_local


def _cfg(tmp_path, **deploy_cfg):
    return config_from_dict({"serve": {"port": 0, "threads": 1, "model_name": "tiny",
                                       "cache_dir": str(tmp_path / "cache")},
                             "deploy": {"target": "local", "ready_timeout_s": 90, **deploy_cfg}})


def test_local_deploy_writes_a_working_endpoint(tiny_dir, tmp_path):
    out = tmp_path / "deploy"
    ep = deploy(_cfg(tmp_path), str(tiny_dir), out)
    try:
        on_disk = json.loads((out / "endpoint.json").read_text())
        assert on_disk == ep and ep["smoke"]["status"] == 200 and ep["url"].startswith("http://127.0.0.1:")
        r = requests.post(ep["protocols"]["openai_completions"], timeout=30,
                          json={"model": "tiny", "prompt": "Hello", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        assert requests.get(ep["protocols"]["ready"], timeout=5).json()["ready"] is True
    finally:
        stop_local(out / "endpoint.json")
    with pytest.raises(ProcessLookupError):
        os.kill(ep["pid"], 0)


def test_local_deploy_of_a_broken_model_fails_with_the_log_and_leaves_nothing_running(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(DeployError, match="exited with status 1") as info:
        deploy(_cfg(tmp_path), str(broken), tmp_path / "deploy")
    assert "not starting the server" in str(info.value)
    assert not (tmp_path / "deploy" / "endpoint.json").exists()


def test_a_taken_port_is_refused_before_anything_starts(tiny_dir, tmp_path):
    """Whatever holds the port could answer the readiness check in the new server's place: a false "ready"."""
    import socket

    with socket.socket() as other:  # another server, listening on the port asked for
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        cfg = _cfg(tmp_path).model_copy(deep=True)
        cfg.serve.port = port
        with pytest.raises(DeployError, match=rf"127.0.0.1:{port} is already in use .*serve.port=0"):
            deploy(cfg, str(tiny_dir), tmp_path / "deploy")
    assert not (tmp_path / "deploy" / "server.log").exists()  # no server was started


def test_a_port_a_replaced_server_just_left_is_free():
    """Connections the previous server closed linger in TIME_WAIT on its port; its replacement binds anyway."""
    import socket

    from lmops.serve.endpoint import port_free

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server closes first: its side of the connection stays in TIME_WAIT
    client.close()
    port_free("127.0.0.1", port)
