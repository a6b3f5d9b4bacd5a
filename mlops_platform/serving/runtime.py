"""The KServe model server: one `kserve.Model` per endpoint routing between a stable and a canary revision,
a registry-backed repository, request guards and metrics, and loopback binding."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from kserve import Model, ModelRepository, ModelServer
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferRequest
from mlflow import MlflowClient
from pydantic import BaseModel, Field

from mlops_platform.serving import protocol
from mlops_platform.aliases import CHAMPION
from mlops_platform.serving.loader import LoadedModel, load_registered
from mlops_platform.serving.metrics import COMPUTE, LATENCY, REQUESTS
from mlops_platform.serving.routing import CANARY, STABLE, Routing, RoutingStore, Splitter

logger = logging.getLogger(__name__)

JSON_TYPES = (b"application/json", b"application/cloudevents+json")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
ROUTING_PREFIX = "/mlops/v1/endpoints"

# Filled in by the model while it answers; read by the middleware that times the request and counts it.
CURRENT_REQUEST: ContextVar[dict | None] = ContextVar("mlops_current_request", default=None)


class EndpointModel(Model):
    """One endpoint name answering V1 and V2; each request goes to the stable or the canary revision.

    With a canary, each revision computes on its own thread, as it would in its own pod: a slow canary then queues
    its own requests, not the stable revision's, and the latency comparison stays fair. Alone, the stable revision
    computes on the event loop, which costs less CPU per request.
    """

    def __init__(self, name: str, stable: LoadedModel, canary: LoadedModel | None = None, canary_percent: int = 0,
                 stable_label: str = STABLE):
        super().__init__(name)
        self.stable, self.canary = stable, canary
        self.stable_label = stable_label
        self.routing = Routing(stable.version, canary.version if canary else None, canary_percent if canary else 0)
        self._splitter = Splitter(self.routing.canary_percent)
        self._threads = {rev: ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{rev}") for rev in (stable_label, CANARY)} if canary else {}
        # Histogram children resolved once here, not per request on the hot path.
        self._timers = {rev: COMPUTE.labels(name, rev) for rev in (stable_label, CANARY)}
        self.ready = True

    @property
    def version(self) -> str:
        return self.stable.version

    @property
    def flavor(self) -> str:
        return self.stable.flavor

    def release(self) -> None:
        """Let the revision threads finish what they hold, then end."""
        for pool in self._threads.values():
            pool.shutdown(wait=False)

    def get_input_types(self) -> list[dict]:
        return protocol.input_metadata(self.stable.feature_names)

    def get_output_types(self) -> list[dict]:
        return protocol.output_metadata(len(self.stable.classifier.classes_))

    async def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers=None):
        revision, loaded = (CANARY, self.canary) if self._splitter.next_is_canary() else (self.stable_label, self.stable)
        note = CURRENT_REQUEST.get()
        if note is not None:
            note["revision"], note["version"] = revision, loaded.version
        v2 = isinstance(payload, InferRequest)
        matrix = protocol.parse_v2(payload, loaded.feature_names) if v2 else protocol.parse_v1(payload, loaded.feature_names)
        timer = self._timers[revision]
        if self._threads:
            labels, proba = await asyncio.get_running_loop().run_in_executor(self._threads[revision], _classify, loaded, matrix, timer)
        else:
            labels, proba = _classify(loaded, matrix, timer)
        if v2:
            return protocol.v2_response(self.name, loaded.version, payload.id, labels, proba)
        return protocol.v1_response(labels)


def _classify(loaded: LoadedModel, matrix: np.ndarray, timer) -> tuple[np.ndarray, np.ndarray]:
    started = time.perf_counter()
    proba = loaded.classifier.predict_proba(matrix)
    timer.observe(time.perf_counter() - started)
    return np.asarray(loaded.classifier.classes_)[np.argmax(proba, axis=1)], proba


class EndpointRepository(ModelRepository):
    """Endpoints backed by the MLflow registry; routing is applied atomically and persisted."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None, routing_path: str | None = None,
                 revision_label: str = STABLE):
        super().__init__(models_dir="")
        # In a cluster each revision is its own pod; its label says which one it is in the shared metrics.
        self.revision_label = revision_label
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self.store = RoutingStore(routing_path)
        self._loaded: dict[tuple[str, str], LoadedModel] = {}

    def _version(self, name: str, version: str) -> LoadedModel:
        key = (name, version)
        if key not in self._loaded:
            self._loaded[key] = load_registered(self.client, name, version=version)
        return self._loaded[key]

    def apply(self, name: str, routing: Routing) -> EndpointModel:
        """Load what the routing needs, then swap it in with one assignment: requests in flight finish on the old one."""
        stable = self._version(name, routing.stable)
        canary = self._version(name, routing.canary) if routing.canary else None
        model = EndpointModel(name, stable, canary, routing.canary_percent, stable_label=self.revision_label)
        previous = self.get_model(name)
        self.update(model)
        if isinstance(previous, EndpointModel):
            previous.release()
        self.store.save(name, model.routing)
        keep = {(name, routing.stable), (name, routing.canary)}
        for key in [k for k in self._loaded if k[0] == name and k not in keep]:
            del self._loaded[key]
        logger.info("endpoint %s routing %s", name, model.routing)
        return model

    def restore(self) -> list[str]:
        """At start-up: the persisted routing, else each registered model's champion; failures are logged and skipped."""
        persisted = self.store.load()
        for registered in self.client.search_registered_models():
            if registered.name not in persisted and CHAMPION in (registered.aliases or {}):
                persisted[registered.name] = Routing(stable=str(registered.aliases[CHAMPION]))
        for name, routing in persisted.items():
            try:
                self.apply(name, routing)
            except Exception:
                logger.exception("could not restore endpoint %s with %s", name, routing)
        return sorted(self.get_models())

    def routing_of(self, name: str) -> Routing | None:
        model = self.get_model(name)
        return model.routing if isinstance(model, EndpointModel) else None

    def _load_champion(self, name: str) -> None:
        champion = str(self.client.get_model_version_by_alias(name, CHAMPION).version)
        current = self.routing_of(name)
        keep_canary = current is not None and current.canary not in (None, champion)
        self.apply(name, Routing(champion, current.canary, current.canary_percent) if keep_canary else Routing(champion))

    async def load(self, name: str) -> bool:
        """KServe's repository extension: serve the current champion as stable, keeping a canary in flight."""
        await asyncio.to_thread(self._load_champion, name)
        return True


class VersionedDataPlane(DataPlane):
    """Adds the stable MLflow version to V2 model metadata."""

    async def model_metadata(self, model_name: str) -> dict:
        metadata = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        metadata["versions"] = [model.version]
        metadata["platform"] = f"mlflow-{model.flavor}"
        return metadata


class RoutingBody(BaseModel):
    stable: str
    canary: str | None = None
    canary_percent: int = Field(0, ge=0, le=100)


def install_routing_api(app: FastAPI, repository: EndpointRepository) -> None:
    """`GET|PUT /mlops/v1/endpoints/NAME/routing`: read or set the stable/canary split at run time."""

    @app.get(ROUTING_PREFIX + "/{name}/routing")
    async def get_routing(name: str):
        routing = repository.routing_of(name)
        if routing is None:
            return _json(404, {"error": f"no endpoint named {name!r}"})
        return routing.to_dict()

    @app.put(ROUTING_PREFIX + "/{name}/routing")
    async def put_routing(name: str, body: RoutingBody):
        try:
            routing = Routing(body.stable, body.canary, body.canary_percent)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        try:
            model = await asyncio.to_thread(repository.apply, name, routing)
        except Exception as exc:  # the registry has no such version, or it cannot be loaded
            return _json(404, {"error": f"cannot serve {name} with {routing}: {exc}"})
        return model.routing.to_dict()


def _json(status: int, content: dict) -> JSONResponse:
    return JSONResponse(status_code=status, content=content)


def _model_from_path(path: str) -> str:
    # /v1/models/NAME:predict, /v1/models/NAME:explain, /v2/models/NAME/infer
    tail = path.split("/models/", 1)[-1]
    return tail.split(":", 1)[0].split("/", 1)[0]


class InferenceMiddleware:
    """Pure ASGI (no extra task per request): content type and size guards, then end-to-end metrics."""

    def __init__(self, app, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope["type"] != "http" or scope["method"] != "POST" or not path.endswith((":predict", ":explain", "/infer")):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        note = {"revision": "none", "version": "", "status": 500}
        model = _model_from_path(path)
        try:
            rejected = await self._rejected(scope, receive)
            if rejected is not None:
                status, message, receive = rejected
                if status:
                    note["status"] = status
                    await _send_json(send, status, {"error": message})
                    return
            token = CURRENT_REQUEST.set(note)

            async def send_and_note(message):
                if message["type"] == "http.response.start":
                    note["status"] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_and_note)
            finally:
                CURRENT_REQUEST.reset(token)
        finally:
            REQUESTS.labels(model, note["revision"], note["version"], str(note["status"])).inc()
            LATENCY.labels(model, note["revision"]).observe(time.perf_counter() - started)

    async def _rejected(self, scope, receive):
        """(status, message, receive) when the request must be refused, or a replayed body; None when all is well."""
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type not in JSON_TYPES:
            shown = content_type.decode(errors="replace") or "none"
            return 415, f"Content-Type must be application/json, got {shown!r}", receive
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_body_bytes:
                return 413, f"request body of {int(length)} bytes exceeds the limit of {self.max_body_bytes}", receive
            return None
        # No declared length (chunked): read up to the limit, then hand the body on unchanged.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return 413, f"request body exceeds the limit of {self.max_body_bytes} bytes", receive
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return 0, "", replay


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install_request_guards(app: FastAPI, max_body_bytes: int) -> None:
    """Errors kserve would answer with a 500 (or not at all) become clear 4xx answers; requests are measured."""
    from fastapi.exceptions import RequestValidationError

    app.add_middleware(InferenceMiddleware, max_body_bytes=max_body_bytes)

    async def validation_error(_, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "request body does not match the expected schema")
        return _json(400, {"error": f"invalid request body{f' at {where}' if where else ''}: {message}"})

    app.add_exception_handler(RequestValidationError, validation_error)


class LoopbackModelServer(ModelServer):
    """kserve 0.21 binds REST to 0.0.0.0; this one binds where it is told (127.0.0.1 locally)."""

    def __init__(self, host: str, repository: EndpointRepository, **kwargs: Any):
        super().__init__(registered_models=repository, enable_grpc=False, **kwargs)
        self.host = host
        self.dataplane = VersionedDataPlane(model_registry=repository)

    async def _serve(self):
        self._rest_server.config.host = self.host
        # Per-request logging costs more CPU than the prediction: uvicorn's access log, kserve's latency trace and
        # its TimingMiddleware, which only writes that trace (our middleware measures requests for /metrics).
        for noisy in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._rest_server._add_middlewares = lambda app: None
        add_kserve_handlers = self._rest_server._add_exception_handlers

        def add_handlers(app: FastAPI) -> None:
            add_kserve_handlers(app)
            # kserve logs a full traceback at ERROR for every 400 and 404: a flood of bad requests would then cost
            # more CPU in logging than in serving. Same answers, one debug line each.
            for error, status in ((InvalidInput, 400), (ModelNotFound, 404)):
                app.add_exception_handler(error, _quiet_handler(status))

        self._rest_server._add_exception_handlers = add_handlers
        await super()._serve()


def _quiet_handler(status: int):
    async def handler(_, exc):
        logger.debug("answered %d: %s", status, exc)
        return _json(status, {"error": str(exc)})

    return handler
