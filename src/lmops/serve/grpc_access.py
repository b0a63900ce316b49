"""The same API keys, rate limits and admission queue for KServe's v2 gRPC service (lmops.serve.access is
the HTTP side). The key travels as ``authorization: Bearer KEY`` metadata. Refusals are gRPC statuses:
UNAUTHENTICATED (401), RESOURCE_EXHAUSTED (429) and UNAVAILABLE (503), with ``retry-after`` in the
trailing metadata. Liveness and readiness stay open (lmops.serve.auth.GRPC_OPEN_METHODS)."""

from __future__ import annotations

import grpc
from grpc.aio import ServerInterceptor

from lmops.serve import admission
from lmops.serve.admission import Admission, Refusal
from lmops.serve.auth import GRPC_OPEN_METHODS, ApiKeys

STATUS = {401: grpc.StatusCode.UNAUTHENTICATED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
          503: grpc.StatusCode.UNAVAILABLE}
INFERENCE_METHODS = frozenset({"ModelInfer"})


class AccessInterceptor(ServerInterceptor):
    def __init__(self, keys: ApiKeys, gate: Admission):
        self.keys = keys
        self.gate = gate

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        if handler is None or handler.unary_unary is None or method in GRPC_OPEN_METHODS:
            return handler
        identity = None
        if self.keys.enabled:
            metadata = dict(details.invocation_metadata or ())
            identity = self.keys.identify(metadata.get("authorization"))
            if identity is None:
                return _refusing(handler, admission.unauthorized())
        if method not in INFERENCE_METHODS:
            return handler
        inner = handler.unary_unary

        async def admitted(request, context):
            ticket = self.gate.admit(identity or "client:" + _peer_address(context.peer()))
            if isinstance(ticket, Refusal):
                return await _abort(context, ticket)
            token = admission.bind(ticket)
            try:
                return await inner(request, context)
            finally:
                admission.unbind(token)
                ticket.release()

        return grpc.unary_unary_rpc_method_handler(admitted, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def _refusing(handler, refusal: Refusal):
    async def refuse(request, context):
        return await _abort(context, refusal)

    return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


async def _abort(context, refusal: Refusal):
    if refusal.retry_after_s is not None:
        context.set_trailing_metadata((("retry-after", str(refusal.retry_after_s)),))
    await context.abort(STATUS[refusal.status], refusal.message)


def _peer_address(peer: str | None) -> str:
    # "ipv4:127.0.0.1:5555" / "ipv6:[::1]:5555" -> the address without the port
    return (peer or "?").split(":", 1)[-1].rsplit(":", 1)[0]
