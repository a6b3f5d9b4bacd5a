"""The model server: KServe's REST and gRPC servers bound where they are told, with the platform's API, guards and
metrics."""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures

from fastapi import FastAPI
from grpc import StatusCode, aio
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.model_server import args as model_server_args
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer

from mlops_platform.serving.api import VersionedDataPlane, busy_handler, quiet_handler
from mlops_platform.serving.batching import ServerBusy
from mlops_platform.serving.protocol import TooManyRows
from mlops_platform.serving.repository import EndpointRepository


class LoopbackRESTServer(RESTServer):
    """kserve 0.21's REST server binds to 0.0.0.0 and times every request for a trace log; this one binds where it is
    told (127.0.0.1 locally) and leaves request timing to the platform's own middleware."""

    def __init__(self, host: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.host = host

    def _add_middlewares(self, app: FastAPI) -> None:
        # kserve's TimingMiddleware only writes a trace line per request, which costs more CPU than the prediction.
        pass

    def _add_exception_handlers(self, app: FastAPI) -> None:
        super()._add_exception_handlers(app)
        # kserve logs a full traceback at ERROR for every 400 and 404: a flood of bad requests would then cost more CPU
        # in logging than in serving. Same answers, one debug line each.
        # NotImplementedError: what KServe does not do (its version routes, :explain) is a path this server lacks.
        for error, status in ((InvalidInput, 400), (TooManyRows, 413), (ModelNotFound, 404), (NotImplementedError, 404)):
            app.add_exception_handler(error, quiet_handler(status))
        app.add_exception_handler(ServerBusy, busy_handler)


class PlatformExceptionToStatus(ExceptionToStatusInterceptor):
    """KServe's gRPC error mapping, plus a full queue as UNAVAILABLE (gRPC's 503)."""

    async def handle_exception(self, ex, request_or_iterator, context, method_name):
        if isinstance(ex, ServerBusy):
            await context.abort(StatusCode.UNAVAILABLE, str(ex))
        await super().handle_exception(ex, request_or_iterator, context, method_name)


class LoopbackGRPCServer(GRPCServer):
    """KServe's Open Inference Protocol gRPC server, bound where it is told (kserve 0.21 binds [::])."""

    def __init__(self, host: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.host = host

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(PlatformExceptionToStatus(),),
            options=[("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                     ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length"))],
        )
        add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server)
        self._server.add_insecure_port(f"{self.host}:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()


class PlatformRepositoryExtension(ModelRepositoryExtension):
    """KServe's repository extension, except that loading a model the registry does not know is a 404, not a 503."""

    async def load(self, model_name: str) -> None:
        try:
            await self._model_registry.load(model_name)
        except ModelNotFound:
            raise
        except Exception as exc:
            raise ModelNotReady(model_name, f"{type(exc).__name__}: {exc}") from exc


class PlatformModelServer(ModelServer):
    """A KServe `ModelServer` over the registry-backed repository, REST only, on the loopback REST server."""

    def __init__(self, host: str, repository: EndpointRepository, grpc_port: int | None = None, **kwargs):
        super().__init__(registered_models=repository, enable_grpc=False, **kwargs)
        self.host, self.platform_grpc_port = host, grpc_port
        self.model_repository_extension = PlatformRepositoryExtension(model_registry=repository)
        self.dataplane = VersionedDataPlane(model_registry=repository)

    def start(self, models=()) -> None:
        """Serve until a signal stops it. The endpoints are already in the repository, which loads them itself, and the
        server starts with none at all when nothing is registered yet."""
        # Per-request access and trace logging costs more CPU than the prediction.
        for noisy in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._rest_server = LoopbackRESTServer(
            self.host, FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            grace_period=self.grace_period, event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive)
        self.servers.append(self._rest_server.start())
        if self.platform_grpc_port:
            self._grpc_server = LoopbackGRPCServer(self.host, self.platform_grpc_port, self.dataplane,
                                                   self.model_repository_extension, kwargs=vars(model_server_args))
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
