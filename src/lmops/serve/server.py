"""``lmops serve``: KServe's ModelServer, bound to a chosen address, with one log line per request.

KServe's ``RESTServer`` hard-codes ``host="0.0.0.0"`` in the ``uvicorn.Config`` it builds and
``ModelServer`` has no option for it. ``LocalModelServer`` overrides only ``start``: it builds the
same RESTServer (same FastAPI app, routes, exception handlers, metrics) and sets the config's host
before uvicorn binds, so every KServe behaviour stays KServe's. KServe's v2 gRPC server (same
dataplane, same model object, so the same validation and batcher) runs when ``serve.grpc_port`` is
set, bound to the same host (KServe binds it to [::]). Multi-process workers are off: one process
owns the model and its micro-batcher.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from lmops.serve import _kserve  # noqa: F401  (must precede the kserve imports below)
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.model_server import app as kserve_app
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer

from lmops.config import ServeConfig
from lmops.serve import http_metrics
from lmops.serve.access import AccessControl
from lmops.serve.admission import Admission
from lmops.serve.auth import ApiKeys, load_keys
from lmops.serve.grpc_access import AccessInterceptor
from lmops.serve.guard import RequestGuard
from lmops.serve.model import LmopsModel
from lmops.serve.openai_api import register_openai_routes
from lmops.serve.response_cache import ResponseCache

log = logging.getLogger("lmops.serve")
access_log = logging.getLogger("lmops.serve.access")


class LocalGRPCServer(GRPCServer):
    """KServe's GRPCServer.start, listening on ``host`` instead of [::]."""

    def __init__(self, host: str, port: int, dataplane, repository, max_message_bytes: int, grace_period: int,
                 interceptors: tuple = ()):
        super().__init__(port, dataplane, repository, kwargs={}, grace_period=grace_period)
        self._host = host
        self._max_message_bytes = max_message_bytes
        self._interceptors = interceptors

    async def start(self, max_workers):
        from concurrent import futures

        from grpc import aio

        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # ours first: a refused call (key, rate limit, queue) never reaches KServe's handlers
            interceptors=(*self._interceptors, LoggingInterceptor(), ExceptionToStatusInterceptor()),
            # the same body limit as REST (serve.max_body_bytes), enforced by gRPC itself
            options=[("grpc.max_receive_message_length", self._max_message_bytes)],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
        self._server.add_insecure_port(f"{self._host}:{self._port}")
        log.info("gRPC (v2) on %s:%d", self._host, self._port)
        await self._server.start()
        await self._server.wait_for_termination()


class LocalModelServer(ModelServer):
    def __init__(self, host: str, http_port: int, grpc_port: int | None = None, max_message_bytes: int = 1 << 20,
                 grpc_interceptors: tuple = (), **kwargs):
        kwargs.setdefault("enable_grpc", False)
        kwargs.setdefault("workers", 1)
        # KServe's per-request latency line covers v1/v2 only; RequestLog covers every route
        kwargs.setdefault("enable_latency_logging", False)
        super().__init__(http_port=http_port, **kwargs)  # (re)configures kserve's and uvicorn's loggers
        self.host = host
        self.local_grpc_port = grpc_port
        self.max_message_bytes = max_message_bytes
        self.grpc_interceptors = grpc_interceptors
        logging.getLogger("kserve").addFilter(OneLineClientErrors())
        # RequestLog writes the one line per request: silence uvicorn's access line and the second
        # line KServe's timing middleware writes (set here, after KServe configured logging)
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)

    def start(self, models: list) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
        )
        # read by uvicorn only when it binds, inside serve(): setting it here is enough
        self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        if self.local_grpc_port is not None:
            # kept as _grpc_server so ModelServer.stop shuts it down on SIGTERM
            self._grpc_server = LocalGRPCServer(self.host, self.local_grpc_port, self.dataplane,
                                                self.model_repository_extension, self.max_message_bytes,
                                                self.grace_period, self.grpc_interceptors)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        log.info("serving on http://%s:%d", self.host, self.http_port)
        asyncio.run(self._serve())


class RequestLog:
    """ASGI middleware: ``METHOD PATH STATUS LATENCY`` once per request (streams: until the last byte)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500  # what the client gets if the app raises before starting a response

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            http_metrics.observe(scope["path"], status, seconds)
            access_log.info("%s %s %d %.2f ms", scope["method"], scope["path"], status, seconds * 1000)


class OneLineClientErrors(logging.Filter):
    """KServe's exception handlers (kserve/errors.py) log a full traceback for every 400/404/503 they
    answer; a client's mistake is worth one line, so the traceback is dropped and the message kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.pathname.endswith(("kserve/errors.py", "kserve\\errors.py")):
            exc = record.exc_info[1]
            record.msg, record.args = "%s: %s: %s", (record.funcName, type(exc).__name__, exc)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    lm = logging.getLogger("lmops")
    if not lm.handlers:
        lm.addHandler(handler)
    lm.setLevel(logging.INFO)
    lm.propagate = False
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def serve(model_uri: str, cfg: ServeConfig) -> int:
    """Load, warm up, serve until SIGTERM/SIGINT. Returns the exit status: 1 if the model never got ready."""
    configure_logging()
    keys = ApiKeys(load_keys(cfg))  # before loading: a bad key file fails in a second, not after the load
    log.info("API keys: %s", f"{keys.count} configured, inference routes need Authorization: Bearer"
             if keys.enabled else "none (every route is open)")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    model = LmopsModel(cfg.model_name, model_uri, cfg)
    if not model.load():
        log.error("not starting the server: model %r is not ready (%s)", cfg.model_name, model.load_error)
        return 1
    gate = Admission(cfg)
    server = LocalModelServer(cfg.host, cfg.port, grpc_port=cfg.grpc_port, max_message_bytes=cfg.max_body_bytes,
                              grpc_interceptors=(AccessInterceptor(keys, gate),))
    register_openai_routes(kserve_app, model)
    # outermost last: log -> key, limits, queue -> body limits, errors -> cache -> routes
    kserve_app.add_middleware(ResponseCache, model=model, size=cfg.response_cache_size)
    kserve_app.add_middleware(RequestGuard, cfg=cfg)
    kserve_app.add_middleware(AccessControl, keys=keys, gate=gate)
    kserve_app.add_middleware(RequestLog)  # added last = outermost: logs what the guard answered too
    server.start([model])
    model.stop()
    return 0
