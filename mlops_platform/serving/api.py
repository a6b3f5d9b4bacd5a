"""The HTTP surface the platform adds to KServe's: the routing control API, V2 metadata with the served version,
request guards (content type, size) and end-to-end request metrics, and quiet 4xx handlers."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from pydantic import BaseModel, Field

from mlops_platform.core.canary import CanaryLease, Revision
from mlops_platform.integrations.serving import ROUTING_PREFIX
from mlops_platform.serving.batching import BatchSettings, ServerBusy
from mlops_platform.serving.capture import feedback_of
from mlops_platform.serving.metrics import FEATURE_DRIFT, LATENCY, LIVE_QUALITY, REQUESTS
from mlops_platform.serving.model import CURRENT_REQUEST, EndpointModel
from mlops_platform.serving.protocol import TooManyRows
from mlops_platform.serving.repository import EndpointRepository
from mlops_platform.serving.routing import Routing

logger = logging.getLogger(__name__)

JSON_TYPES = (b"application/json", b"application/cloudevents+json")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
LARGE_BODY_BYTES = 256 * 1024  # bodies above this are decoded on a worker thread, not on the event loop


class VersionedDataPlane(DataPlane):
    """Adds the stable MLflow version to V2 model metadata."""

    async def model_metadata(self, model_name: str) -> dict:
        metadata = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        metadata["versions"] = [model.version]
        metadata["platform"] = f"mlflow-{model.flavor}"
        return metadata


class LeaseBody(BaseModel):
    owner: str = Field(min_length=1, max_length=200)
    seconds: float = Field(gt=0, le=24 * 3600)


class BatchingBody(BaseModel):
    enabled: bool = True
    max_batch_rows: int = Field(64, ge=1)
    max_delay_ms: float = Field(0.0, ge=0, le=1000)
    max_queue_rows: int = Field(8192, ge=1)


class RoutingBody(BaseModel):
    stable: str
    canary: str | None = None
    canary_percent: int = Field(0, ge=0, le=100)
    lease: LeaseBody | None = None
    batching: BatchingBody | None = Field(None, description="absent: keep the endpoint's batching as it is")
    capture_rate: float | None = Field(None, ge=0.0, le=1.0, description="absent: keep the endpoint's capture rate")
    force: bool = Field(False, description="serve versions that did not pass the quality gate (logged)")


def install_routing_api(app: FastAPI, repository: EndpointRepository) -> None:
    """`GET|PUT /mlops/v1/endpoints/NAME/routing`: read or set the stable/canary split at run time.

    Only registered version numbers that passed the quality gate may serve, unless `force` says otherwise (and the
    log says who forced what); aliases such as `latest` are refused, so what serves is always a judged, fixed version.
    A canary carries a lease: the server rolls it back on its own when the lease runs out with no verdict.
    """

    @app.get(ROUTING_PREFIX + "/{name}/routing")
    async def get_routing(name: str):
        routing = repository.routing_of(name)
        if routing is None:
            return _json(404, {"error": f"no endpoint named {name!r}"})
        return routing.to_dict()

    @app.put(ROUTING_PREFIX + "/{name}/routing")
    async def put_routing(name: str, body: RoutingBody):
        versions = [v for v in (body.stable, body.canary) if v is not None]
        not_numbers = [v for v in versions if not v.isdigit()]
        if not_numbers:
            return _json(400, {"error": f"versions must be registered version numbers, not {not_numbers}"})
        lease = CanaryLease(body.lease.owner, time.time() + body.lease.seconds) if body.lease else None
        current = repository.routing_of(name)
        batching = current.batching if current is not None else None
        try:
            if body.batching is not None:
                batching = BatchSettings.from_spec(body.batching.model_dump())
            capture_rate = body.capture_rate if body.capture_rate is not None else (current.capture_rate if current else 0.0)
            routing = Routing(body.stable, body.canary, body.canary_percent, lease, batching, capture_rate)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        if body.force:
            logger.warning("endpoint %s: routing %s forced past the quality gate", name, routing)
        else:
            ungated = [v for v in versions if not await asyncio.to_thread(repository.passed_gate, name, v)]
            if ungated:
                return _json(409, {"error": f"{name} versions {ungated} have not passed the quality gate; "
                                            "send force=true to serve them anyway (it is logged)"})
        try:
            model = await asyncio.to_thread(repository.apply, name, routing)
        except Exception as exc:  # the registry has no such version, or it cannot be loaded
            return _json(404, {"error": f"cannot serve {name} with {routing}: {exc}"})
        return model.routing.to_dict()


class FeedbackItem(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    label: str | int | float | bool
    row: int = Field(0, ge=0, description="the row of the request this label is for")


class FeedbackBody(BaseModel):
    labels: list[FeedbackItem] = Field(min_length=1, max_length=10_000)


class MonitoringBody(BaseModel):
    version: str
    feature_drift: dict[str, float] = Field(default_factory=dict)
    live_quality: dict[str, float] = Field(default_factory=dict)


def install_monitoring_api(app: FastAPI, repository: EndpointRepository) -> None:
    """`POST /mlops/v1/endpoints/NAME/feedback`: ground truth for earlier predictions, by the request id every answer
    carries (`X-Request-Id`, and `id` in V2), written beside the captured requests. `PUT …/monitoring`: the latest
    drift report's figures, exported as the `mlops_feature_drift` and `mlops_live_quality` gauges. Both need the
    control token."""

    @app.post(ROUTING_PREFIX + "/{name}/feedback", status_code=202)
    async def post_feedback(name: str, body: FeedbackBody):
        if repository.routing_of(name) is None:
            return _json(404, {"error": f"no endpoint named {name!r}"})
        if repository.capture is None:
            return _json(409, {"error": "capture is off on this server (no --capture-uri): feedback has nowhere to go"})
        if not repository.capture.offer(feedback_of(name, [item.model_dump() for item in body.labels])):
            return _json(503, {"error": "the capture queue is full; send the labels again shortly"})
        return {"accepted": len(body.labels)}

    @app.put(ROUTING_PREFIX + "/{name}/monitoring")
    async def put_monitoring(name: str, body: MonitoringBody):
        if repository.routing_of(name) is None:
            return _json(404, {"error": f"no endpoint named {name!r}"})
        for feature, value in body.feature_drift.items():
            FEATURE_DRIFT.labels(name, feature).set(value)
        for metric_name, value in body.live_quality.items():
            LIVE_QUALITY.labels(name, metric_name, body.version).set(value)
        return {"features": len(body.feature_drift), "metrics": len(body.live_quality)}


class ControlAuthMiddleware:
    """Changes to what serves (routing, repository load/unload) need `Authorization: Bearer TOKEN`; reads do not.
    Without a token configured, those routes are switched off."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    @staticmethod
    def guarded(method: str, path: str) -> bool:
        return method != "GET" and path.startswith((ROUTING_PREFIX + "/", "/v2/repository/"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.guarded(scope["method"], scope.get("path", "")):
            return await self.app(scope, receive, send)
        if self.token is None:
            return await _send_json(send, 403, {"error": "the control API is switched off on this server (no --control-token-file)"})
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, b"Bearer " + self.token):
            return await _send_json(send, 401, {"error": "a bearer token is required to change what this server serves"},
                                    [(b"www-authenticate", b'Bearer realm="mlops-control"')])
        return await self.app(scope, receive, send)


def _json(status: int, content: dict) -> JSONResponse:
    return JSONResponse(status_code=status, content=content)


V1_PATH = re.compile(r"^/v1/models/([^/:]+):(predict|explain)$")
V2_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/infer|/ready|)$")
UNKNOWN_MODEL = "__unknown__"  # the one metric label every unknown model name shares: labels stay bounded


_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(headers: dict) -> str:
    """The client's X-Request-Id when it is a plain token, else a new one: the key ground truth is joined on later."""
    given = headers.get(b"x-request-id", b"")
    return given.decode() if _REQUEST_ID.match(given) else uuid.uuid4().hex


def _media_type(headers: dict) -> bytes:
    """The media type of Content-Type, as HTTP compares it: without parameters, case-insensitive."""
    return headers.get(b"content-type", b"").split(b";")[0].strip().lower()


def _with_header(scope: dict, name: bytes, value: bytes) -> dict:
    return {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != name] + [(name, value)]}


class InferenceMiddleware:
    """Pure ASGI (no extra task per request) in front of KServe's inference routes.

    Content types are matched as HTTP says (parameters and case do not matter; a V2 request without one is JSON, as
    KServe's and Triton's servers take it; the V2 binary tensor extension is let through to KServe's decoder);
    bodies are size-limited; version paths are served by the version they name when it is loaded, else 404;
    `:explain` is 404. Every inference request is counted by model, revision, version and status, with unknown model
    names folded into one label, and timed unless it was the client's mistake.
    """

    def __init__(self, app, repository: EndpointRepository, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.repository = repository
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        v1, v2 = V1_PATH.match(path), V2_PATH.match(path)
        if not (v1 or v2):
            return await self.app(scope, receive, send)
        name = (v1 or v2).group(1)
        routing = self.repository.routing_of(name)
        pinned = None
        if v2 and v2.group(2) is not None:  # /v2/models/NAME/versions/N/(infer|ready)
            version = v2.group(2)
            served = {}
            if routing is not None:
                served = {routing.stable: Revision.STABLE, **({routing.canary: Revision.CANARY} if routing.canary else {})}
            if version not in served:
                where = "is not served here" if routing is None else f"serves {sorted(served)}"
                return await _send_json(send, 404, {"error": f"version {version!r} of model {name!r} is not loaded; {name!r} {where}"})
            pinned = served[version]
            plain = f"/v2/models/{name}{v2.group(3)}"
            scope = {**scope, "path": plain, "raw_path": plain.encode()}
        if scope["method"] != "POST" or (v2 and v2.group(3) != "/infer"):
            return await self.app(scope, receive, send)
        if v1 and v1.group(2) == "explain":
            return await _send_json(send, 404, {"error": f"model {name!r} serves predictions only: there is no :explain; use :predict"})
        started = time.perf_counter()
        request_id = _request_id(dict(scope["headers"]))
        id_header = (b"x-request-id", request_id.encode())
        note = {"revision": "none", "version": "", "status": 500, "pinned": pinned, "request_id": request_id}
        label = name if routing is not None else UNKNOWN_MODEL
        try:
            refused, scope, receive = await self._admit(scope, receive, v2 is not None)
            if refused is not None:
                note["status"] = refused[0]
                return await _send_json(send, *refused)
            token = CURRENT_REQUEST.set(note)
            try:
                model = self.repository.get_model(name)
                if v1 and isinstance(model, EndpointModel):
                    try:
                        note["status"], body = await _predict_v1(model, receive)
                    except ServerBusy as exc:
                        note["status"] = 503
                        return await _send_json(send, 503, {"error": str(exc)}, [*busy_headers(exc), id_header])
                    return await _send_bytes(send, note["status"], body, [id_header])

                async def send_and_note(message):
                    if message["type"] == "http.response.start":
                        note["status"] = message["status"]
                        message = {**message, "headers": [*message.get("headers", []), id_header]}
                    await send(message)

                await self.app(scope, receive, send_and_note)
            finally:
                CURRENT_REQUEST.reset(token)
        finally:
            REQUESTS.labels(label, note["revision"], note["version"], str(note["status"])).inc()
            if not 400 <= note["status"] < 500:  # a client's mistake says nothing about how fast a revision serves
                LATENCY.labels(label, note["revision"]).observe(time.perf_counter() - started)

    async def _admit(self, scope, receive, is_v2: bool):
        """((status, body), scope, receive) when the request must be refused; else (None, scope, receive) with the
        content type made canonical and a chunked body read (up to the limit) and replayed."""
        headers = dict(scope["headers"])
        media = _media_type(headers)
        binary = is_v2 and b"inference-header-content-length" in headers
        if media in JSON_TYPES or (is_v2 and not media and not binary):
            # KServe's V1 path compares the header byte for byte; hand it the bare media type.
            scope = _with_header(scope, b"content-type", media or b"application/json")
        elif not (binary and media in (b"", b"application/octet-stream")):
            shown = media.decode(errors="replace") or "none"
            return (415, {"error": f"Content-Type must be application/json, got {shown!r}"}), scope, receive
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_body_bytes:
                return (413, {"error": f"request body of {int(length)} bytes exceeds the limit of {self.max_body_bytes}"}), scope, receive
            return None, scope, receive
        # No declared length (chunked): read up to the limit, then hand the body on unchanged.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return (413, {"error": f"request body exceeds the limit of {self.max_body_bytes} bytes"}), scope, receive
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, scope, replay


async def _predict_v1(model: EndpointModel, receive) -> tuple[int, bytes]:
    """KServe's V1 predict, answered here: the same request and answer, without FastAPI's routing and KServe's
    data plane around them, which cost more CPU than a tabular prediction. A large body is decoded off the loop."""
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    try:
        payload = orjson.loads(body) if len(body) < LARGE_BODY_BYTES else await asyncio.to_thread(orjson.loads, body)
    except orjson.JSONDecodeError as exc:
        return 400, orjson.dumps({"error": f"Unrecognized request format: {exc}"})
    try:
        return 200, orjson.dumps(await model.predict(payload), option=orjson.OPT_SERIALIZE_NUMPY)
    except ServerBusy:
        raise  # answered by the caller, with Retry-After
    except TooManyRows as exc:
        return 413, orjson.dumps({"error": str(exc)})
    except InvalidInput as exc:
        return 400, orjson.dumps({"error": str(exc)})
    except Exception as exc:  # the model failed on a well-formed request: the server's fault, and counted so
        logger.exception("endpoint %s failed on a V1 request", model.name)
        return 500, orjson.dumps({"error": f"{type(exc).__name__}: {exc}"})


async def _send_bytes(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send, status: int, content: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await _send_bytes(send, status, json.dumps(content).encode(), headers)


def install_request_guards(app: FastAPI, repository: EndpointRepository, max_body_bytes: int,
                           control_token: str | None = None) -> None:
    """Errors kserve would answer with a 500 (or not at all) become clear 4xx answers; requests are measured; changes
    to what serves need the control token."""
    from fastapi.exceptions import RequestValidationError

    app.add_middleware(InferenceMiddleware, repository=repository, max_body_bytes=max_body_bytes)
    app.add_middleware(ControlAuthMiddleware, token=control_token)

    async def validation_error(_, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "request body does not match the expected schema")
        return _json(400, {"error": f"invalid request body{f' at {where}' if where else ''}: {message}"})

    app.add_exception_handler(RequestValidationError, validation_error)


def busy_headers(exc: ServerBusy) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(exc.retry_after_s).encode())]


async def busy_handler(_, exc: ServerBusy) -> JSONResponse:
    """A full queue: 503 with Retry-After, counted as the server's in the metrics."""
    return JSONResponse(status_code=503, content={"error": str(exc)}, headers={"Retry-After": str(exc.retry_after_s)})


def quiet_handler(status: int):
    async def handler(_, exc):
        logger.debug("answered %d: %s", status, exc)
        return _json(status, {"error": str(exc)})

    return handler
