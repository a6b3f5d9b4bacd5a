"""KServe's admission rules for canaries, as its webhook applies them: `validateCanarySpecs` and
`validateExactlyOneImplementation` in pkg/apis/serving/v1beta1/ (inference_service_validation.go and component.go),
tag v0.20.0. Ported rule for rule, with the upstream messages, so that a test fails where the webhook would refuse."""

from __future__ import annotations

STANDARD = "Standard"
# The predictor's implementations (PredictorSpec.GetImplementations): the framework fields, `model`, or containers.
FRAMEWORKS = ("xgboost", "pytorch", "triton", "sklearn", "tensorflow", "onnx", "pmml", "lightgbm", "paddle",
              "huggingface", "model")
STORAGE_URI_ENV = "STORAGE_URI"  # constants.CustomSpecStorageUriEnvVarKey
PREDICTOR_CONTAINER = "kserve-container"  # constants.InferenceServiceContainerName


def implementations(predictor: dict) -> list[str]:
    found = [f for f in FRAMEWORKS if predictor.get(f) is not None]
    if predictor.get("containers"):
        found.append("custom")
    return found


def storage_uri(predictor: dict) -> str | None:
    """GetImplementation().GetStorageUri(): a framework's or model's storageUri, or a custom predictor's STORAGE_URI."""
    [kind] = implementations(predictor)[:1] or [None]
    if kind is None:
        return None
    if kind != "custom":
        return predictor[kind].get("storageUri")
    for container in predictor["containers"]:
        if container.get("name") == PREDICTOR_CONTAINER:
            return next((e.get("value") for e in container.get("env", []) if e.get("name") == STORAGE_URI_ENV), None)
    return None


def canary_errors(isvc: dict) -> str | None:
    """The webhook's refusal of an InferenceService's canaries, or None where it admits them."""
    spec = isvc["spec"]
    canaries = spec.get("canary") or []
    if not canaries:
        return None
    if (isvc["metadata"].get("annotations") or {}).get("serving.kserve.io/deploymentMode") != STANDARD:
        return f"canary is only supported in {STANDARD} deployment mode"
    stable = spec["predictor"]
    if storage_uri(stable) is None and stable.get("model") is None:
        return "canary requires a stable predictor with a model (multi-model serving is not supported with canary)"
    names: set[str] = set()
    total = 0
    for i, canary in enumerate(canaries):
        predictor = canary["predictor"]
        name = predictor.get("name", "")
        if not name:
            return f"canary[{i}] predictor.name is required"
        if name in names:
            return f"canary predictor.name {name!r} is duplicated"
        names.add(name)
        if name == stable.get("name", ""):
            return f"canary predictor.name {name!r} conflicts with stable predictor name"
        percent = canary.get("trafficPercent", 0)
        if not 0 <= percent <= 100:
            return f"canary {name!r} trafficPercent must be between 0 and 100, got {percent}"
        total += percent
        if len(implementations(predictor)) != 1:
            return f"canary {name!r} predictor: exactly one implementation must be specified"
        if predictor.get("workerSpec") is not None:
            return f"canary {name!r} must not set workerSpec (multi-node is not yet supported for canary)"
        for field in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
            if predictor.get(field):
                return f"canary {name!r} must not set {field} (canary uses fixed replicas)"
        if predictor.get("minReplicas") is not None and predictor["minReplicas"] > stable.get("minReplicas", 1):
            return (f"canary {name!r} minReplicas ({predictor['minReplicas']}) must not exceed stable predictor "
                    f"minReplicas ({stable.get('minReplicas', 1)})")
    if total > 100:
        return f"sum of canary trafficPercent values ({total}) must be <= 100"
    return None
