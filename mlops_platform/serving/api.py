"""The HTTP surface the platform adds to KServe's: the routing control API, V2 metadata with the served version,
request guards (content type, size) and end-to-end request metrics, and quiet 4xx handlers."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from kserve.protocol.dataplane import DataPlane
from pydantic import BaseModel, Field

from mlops_platform.core.canary import CanaryLease
from mlops_platform.integrations.serving import ROUTING_PREFIX
from mlops_platform.serving.metrics import LATENCY, REQUESTS
from mlops_platform.serving.model import CURRENT_REQUEST
from mlops_platform.serving.repository import EndpointRepository
from mlops_platform.serving.routing import Routing

logger = logging.getLogger(__name__)

JSON_TYPES = (b"application/json", b"application/cloudevents+json")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


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


class RoutingBody(BaseModel):
    stable: str
    canary: str | None = None
    canary_percent: int = Field(0, ge=0, le=100)
    lease: LeaseBody | None = None
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
        try:
            routing = Routing(body.stable, body.canary, body.canary_percent, lease)
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
            if not 400 <= note["status"] < 500:  # a client's mistake says nothing about how fast a revision serves
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


async def _send_json(send, status: int, content: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def install_request_guards(app: FastAPI, max_body_bytes: int, control_token: str | None = None) -> None:
    """Errors kserve would answer with a 500 (or not at all) become clear 4xx answers; requests are measured; changes
    to what serves need the control token."""
    from fastapi.exceptions import RequestValidationError

    app.add_middleware(InferenceMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(ControlAuthMiddleware, token=control_token)

    async def validation_error(_, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "request body does not match the expected schema")
        return _json(400, {"error": f"invalid request body{f' at {where}' if where else ''}: {message}"})

    app.add_exception_handler(RequestValidationError, validation_error)


def quiet_handler(status: int):
    async def handler(_, exc):
        logger.debug("answered %d: %s", status, exc)
        return _json(status, {"error": str(exc)})

    return handler
