"""The KServe model server: a `kserve.Model` per champion, a registry-backed repository, loopback binding."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from kserve import Model, ModelRepository, ModelServer
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferRequest
from mlflow import MlflowClient

from mlops_platform.serving import protocol
from mlops_platform.serving.loader import CHAMPION, LoadedModel, load_registered

logger = logging.getLogger(__name__)

JSON_TYPES = ("application/json", "application/cloudevents+json")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
INFERENCE_SUFFIXES = (":predict", ":explain", "/infer")


class ChampionModel(Model):
    """One registered model version answering V1 and V2 predictions."""

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded.name)
        self.loaded = loaded
        self.ready = True

    @property
    def version(self) -> str:
        return self.loaded.version

    def get_input_types(self) -> list[dict]:
        return protocol.input_metadata(self.loaded.feature_names)

    def get_output_types(self) -> list[dict]:
        return protocol.output_metadata(len(self.loaded.classifier.classes_))

    async def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers=None):
        features = self.loaded.feature_names
        if isinstance(payload, InferRequest):
            matrix = protocol.parse_v2(payload, features)
        else:
            matrix = protocol.parse_v1(payload, features)
        classifier = self.loaded.classifier
        proba = classifier.predict_proba(matrix)
        labels = np.asarray(classifier.classes_)[np.argmax(proba, axis=1)]
        if isinstance(payload, InferRequest):
            return protocol.v2_response(self.name, self.version, payload.id, labels, proba)
        return protocol.v1_response(labels)


class ChampionRepository(ModelRepository):
    """Serves each registered model's `champion`; V2 `repository/models/NAME/load` re-resolves the alias."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None):
        super().__init__(models_dir="")
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)

    def load_champions(self) -> list[str]:
        """Every registered model that has a champion, loaded at start-up; a model that fails is logged and skipped."""
        loaded = []
        for registered in self.client.search_registered_models():
            if CHAMPION in (registered.aliases or {}):
                try:
                    self._load(registered.name)
                    loaded.append(registered.name)
                except Exception:
                    logger.exception("could not load the champion of %s", registered.name)
        return loaded

    def _load(self, name: str) -> None:
        model = ChampionModel(load_registered(self.client, name, alias=CHAMPION))
        # A plain dict assignment: requests in flight keep the old model object, new ones get the new one.
        self.update(model)
        logger.info("serving %s version %s", name, model.version)

    async def load(self, name: str) -> bool:
        await asyncio.to_thread(self._load, name)
        return True


class VersionedDataPlane(DataPlane):
    """Adds the served MLflow version to V2 model metadata."""

    async def model_metadata(self, model_name: str) -> dict:
        metadata = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        metadata["versions"] = [model.version]
        metadata["platform"] = f"mlflow-{model.loaded.flavor}"
        return metadata


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def install_request_guards(app: FastAPI, max_body_bytes: int) -> None:
    """Errors kserve would answer with a 500 (or not at all) become clear 4xx answers."""

    @app.middleware("http")
    async def guard(request, call_next):
        if request.method == "POST" and request.url.path.endswith(INFERENCE_SUFFIXES):
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type not in JSON_TYPES:
                return _error(415, f"Content-Type must be application/json, got {content_type or 'none'!r}")
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_body_bytes:
                return _error(413, f"request body of {length} bytes exceeds the limit of {max_body_bytes}")
        return await call_next(request)

    async def validation_error(_, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "request body does not match the V2 inference request schema")
        return _error(400, f"invalid request body{f' at {where}' if where else ''}: {message}")

    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(RequestValidationError, validation_error)


class LoopbackModelServer(ModelServer):
    """kserve 0.21 binds REST to 0.0.0.0; this one binds where it is told (127.0.0.1 locally)."""

    def __init__(self, host: str, repository: ChampionRepository, **kwargs: Any):
        super().__init__(registered_models=repository, enable_grpc=False, **kwargs)
        self.host = host
        self.dataplane = VersionedDataPlane(model_registry=repository)

    async def _serve(self):
        self._rest_server.config.host = self.host
        await super()._serve()
