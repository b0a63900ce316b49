"""KServe v2: model metadata that describes the input and outputs, and the gRPC endpoint
(`lmops serve --grpc-port`) through kserve's own gRPC client, bound to 127.0.0.1 like REST."""

from __future__ import annotations

import asyncio

import pytest
import requests

from conftest import free_port, listening_addresses, start_server, stop_server

EXPECTED_INPUTS = [{"name": "prompt", "datatype": "BYTES", "shape": [-1]}]
EXPECTED_OUTPUTS = [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                    {"name": "completion_tokens", "datatype": "INT64", "shape": [-1]}]


@pytest.fixture(scope="module")
def grpc_server(tiny_dir, tmp_path_factory):
    port = free_port()
    srv = start_server(tiny_dir, tmp_path_factory.mktemp("grpc") / "server.log", f"serve.grpc_port={port}", "serve.default_max_new_tokens=8",
                       "serve.max_new_tokens=24")
    srv.grpc = f"127.0.0.1:{port}"
    yield srv
    assert stop_server(srv) == 0


def test_v2_metadata_describes_prompt_and_outputs(server):
    meta = requests.get(server.url(f"/v2/models/{server.name}"), timeout=10).json()
    assert meta["inputs"] == EXPECTED_INPUTS and meta["outputs"] == EXPECTED_OUTPUTS


def test_grpc_infer_and_metadata_with_kserve_client(grpc_server):
    from lmops.serve import _kserve  # noqa: F401
    from kserve import InferenceGRPCClient, InferInput, InferRequest
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    async def call():
        client = InferenceGRPCClient(grpc_server.grpc, timeout=60, retries=2)
        try:
            inp = InferInput("prompt", [2], "BYTES", ["Hello", "KServe speaks"])
            ok = await client.infer(InferRequest(grpc_server.name, [inp], parameters={"max_new_tokens": 5}))
            meta = await client._client_stub.ModelMetadata(pb.ModelMetadataRequest(name=grpc_server.name))
            bad = None
            try:
                await client.infer(InferRequest(grpc_server.name, [inp], parameters={"max_new_tokens": 99}))
            except Exception as e:  # grpc.aio.AioRpcError
                bad = e
            return ok, meta, bad
        finally:
            await client.close()

    ok, meta, bad = asyncio.run(call())
    assert ok.outputs[0].name == "text" and len(ok.outputs[0].as_numpy()) == 2
    assert ok.outputs[1].as_numpy().tolist() == [5, 5]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("prompt", "BYTES", [-1])]
    assert [t.name for t in meta.outputs] == ["text", "completion_tokens"]
    assert bad is not None and bad.code().name == "INVALID_ARGUMENT" and "between 1 and 24" in bad.details()
    # same answer as REST v2 for the same greedy request
    rest = requests.post(grpc_server.url(f"/v2/models/{grpc_server.name}/infer"), timeout=30, json={
        "inputs": [{"name": "prompt", "shape": [2], "datatype": "BYTES", "data": ["Hello", "KServe speaks"]}],
        "parameters": {"max_new_tokens": 5}}).json()
    assert rest["outputs"][0]["data"] == [t.decode() if isinstance(t, bytes) else t for t in ok.outputs[0].as_numpy().tolist()]


def test_grpc_binds_loopback_only(grpc_server):
    listening = listening_addresses(int(grpc_server.grpc.rsplit(":", 1)[1]))
    # 127.0.0.1; gRPC listens on an IPv6 socket as ::ffff:127.0.0.1 (still loopback only)
    assert listening and set(listening) <= {"0100007F", "0000000000000000FFFF00000100007F"}, listening
