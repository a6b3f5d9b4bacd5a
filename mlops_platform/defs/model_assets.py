"""The asset graph of one model, built from its spec:
landing → dataset → model → challenger → gate → canary → champion → watched endpoint."""

import base64
import time
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd

from mlops_platform.core import canary, data, evaluation, training
from mlops_platform.core.spec import ModelSpec
from mlops_platform.aliases import CHAMPION
from mlops_platform.defs.resources import Endpoint, LandingStore, LoggedRun, MLflowResource, ModelServing

GPU_POOL = "gpu"
BATCHES_VALID = "batches_valid"
QUALITY_GATE = "quality_gate"
CANARY_ANALYSIS = "canary_analysis"
SLO_GUARD = "slo_guard"


@dataclass
class TrainingDataset:
    """The validated rows split into training and holdout, with reference statistics for drift checks."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    reference: dict
    features: list[str]


def _png_markdown(png: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _replay_rows(dataset: "TrainingDataset", limit: int = 256) -> list[list[float]]:
    return dataset.holdout[dataset.features].head(limit).to_numpy(dtype=np.float64).tolist()


def release_canary(spec: ModelSpec, mlflow: MLflowResource, serving: ModelServing, stable: str | None, version: str,
                   rows: list[list[float]]) -> dict:
    """Serve `version` as canary beside `stable`, judge it on live traffic, roll it back unless it passes; tags the verdict."""
    name = spec.registered_name
    if stable is None:
        verdict = {"outcome": canary.PROMOTE, "reason": "no champion yet: nothing to compare against", "elapsed_s": 0.0}
    else:
        started = time.perf_counter()
        serving.set_routing(name, stable, version, spec.canary.traffic_percent)
        with serving.replay(name, rows, spec.canary.replay_rps):
            result = canary.analyze(lambda: serving.snapshot(name), spec.canary.thresholds(spec.slo))
        if result.outcome != canary.PROMOTE:
            serving.set_routing(name, stable)  # automatic rollback: the canary leaves, stable takes 100%
        verdict = {**result.to_dict(), "seconds_to_decision": round(time.perf_counter() - started, 3)}
    passed = verdict["outcome"] == canary.PROMOTE
    mlflow.tag_version(name, version, {"canary": "passed" if passed else "rejected", "canary_reason": verdict["reason"]})
    return verdict


def guard_champion(spec: ModelSpec, mlflow: MLflowResource, serving: ModelServing, version: str, previous: str | None,
                   rows: list[list[float]]) -> tuple[canary.Verdict, Endpoint]:
    """Watch a freshly promoted champion; on an SLO breach give `champion` and all traffic back to the previous one."""
    name = spec.registered_name
    with serving.replay(name, rows, spec.canary.replay_rps):
        verdict = canary.watch(lambda: serving.snapshot(name), spec.slo.thresholds())
    if verdict.outcome == canary.ROLLBACK and previous is not None:
        mlflow.demote(name, version, previous, reason=verdict.reason)
        return verdict, serving.deploy(name, previous)
    return verdict, serving.deploy(name, version)


def asset_key(spec: ModelSpec, name: str) -> dg.AssetKey:
    return dg.AssetKey([spec.name, name])


def job_name(spec: ModelSpec) -> str:
    return f"{spec.name}_train_and_deploy"


def build_model_assets(spec: ModelSpec, gpu_step_tags: dict | None = None, cpu_step_tags: dict | None = None) -> list[dg.AssetsDefinition]:
    """The assets and checks for one model; nothing here is specific to any model.

    The step tags come from the profile (Kubernetes placement in the cloud, nothing locally); a torch model's
    training step gets the GPU tags and joins the `gpu` pool, which caps how many run at once across all runs.
    """
    group = spec.name
    on_gpu = spec.estimator.framework == "torch"
    cpu_tags = cpu_step_tags or {}
    train_tags = (gpu_step_tags or {}) if on_gpu else cpu_tags
    features = spec.dataset.features
    target = spec.dataset.target
    key = lambda name: asset_key(spec, name)  # noqa: E731

    @dg.asset(
        key=key("landing_batches"),
        group_name=group, op_tags=cpu_tags,
        check_specs=[dg.AssetCheckSpec(BATCHES_VALID, asset=key("landing_batches"), blocking=True,
                                       description="Every landing batch matches the spec's schema; bad ones are quarantined.")],
        kinds={"pandas"},
    )
    def landing_batches(context: dg.AssetExecutionContext, landing: LandingStore):
        """Raw batches read from the landing location; bad batches are moved to quarantine."""
        frames, accepted, quarantined = [], [], {}
        for name in landing.list_batches(spec.name):
            frame, report = data.validate_batch(name, landing.read(spec.name, name), spec.dataset)
            if report.ok:
                frames.append(frame)
                accepted.append(name)
            else:
                reason = "; ".join(report.problems)
                quarantined[name] = {"reason": reason, "moved_to": landing.quarantine(spec.name, name, reason)}
                context.log.warning(f"quarantined batch {name}: {reason}")
        combined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=spec.dataset.columns)
        yield dg.Output(combined, metadata={
            "rows": len(combined),
            "accepted_batches": dg.MetadataValue.json(accepted),
            "quarantined_batches": dg.MetadataValue.json(quarantined),
        })
        if quarantined:
            description = f"{len(quarantined)} batch(es) quarantined: " + "; ".join(f"{n}: {q['reason']}" for n, q in quarantined.items())
        elif combined.empty:
            description = "no valid landing batches"
        else:
            description = f"{len(accepted)} batch(es), {len(combined)} rows, all valid"
        yield dg.AssetCheckResult(
            check_name=BATCHES_VALID,
            passed=bool(not quarantined and not combined.empty),
            severity=dg.AssetCheckSeverity.ERROR,
            description=description,
            metadata={"quarantined": dg.MetadataValue.json(quarantined)},
        )

    @dg.asset(key=key("training_dataset"), group_name=group, op_tags=cpu_tags, ins={"batches": dg.AssetIn(key("landing_batches"))}, kinds={"pandas"})
    def training_dataset(batches: pd.DataFrame) -> dg.Output[TrainingDataset]:
        """Validated rows split into training and holdout, with reference statistics for drift checks."""
        split = data.split_dataset(batches, spec.dataset)
        reference = data.reference_statistics(split.train, spec.dataset)
        dataset = TrainingDataset(train=split.train, holdout=split.holdout, reference=reference, features=features)
        return dg.Output(dataset, metadata={
            "train_rows": len(split.train),
            "holdout_rows": len(split.holdout),
            "target_distribution": dg.MetadataValue.json(reference["target_distribution"]),
            "preview": dg.MetadataValue.md(split.train.head(5).to_markdown(index=False)),
        })

    @dg.asset(key=key("trained_model"), group_name=group, ins={"dataset": dg.AssetIn(key("training_dataset"))},
              kinds={spec.estimator.framework, "mlflow"}, op_tags=train_tags, pool=GPU_POOL if on_gpu else None)
    def trained_model(context: dg.AssetExecutionContext, dataset: TrainingDataset, mlflow: MLflowResource) -> dg.Output[dict]:
        """The spec's estimator fitted on the training rows and logged to MLflow with its holdout metrics."""
        started = time.perf_counter()
        model = training.train(spec, dataset.train)
        train_seconds = time.perf_counter() - started
        x_holdout = training.feature_matrix(dataset.holdout, features)
        y_holdout = dataset.holdout[target].to_numpy()
        metrics = evaluation.evaluate(model, x_holdout, y_holdout, spec.metrics)
        png = evaluation.confusion_matrix_png(model, x_holdout, y_holdout, f"{spec.name} holdout")
        run = mlflow.log_training(
            spec, model, dataset.train,
            params=training.hyperparameters(spec),
            metrics=metrics,
            tags={"dagster_run_id": context.run.run_id, "model": spec.name, "framework": spec.estimator.framework},
            images={"confusion_matrix.png": png},
            documents={"reference_statistics.json": dataset.reference},
        )
        result = {"run_id": run.run_id, "model_uri": run.model_uri, "experiment_id": run.experiment_id, "metrics": metrics}
        return dg.Output(result, metadata={
            "mlflow_run_id": run.run_id,
            "mlflow_run": dg.MetadataValue.url(run.url),
            "train_seconds": round(train_seconds, 3),
            **{f"holdout_{k}": round(v, 4) for k, v in metrics.items()},
            "confusion_matrix": _png_markdown(png, "confusion matrix"),
        })

    @dg.asset(key=key("challenger"), group_name=group, op_tags=cpu_tags, ins={"trained": dg.AssetIn(key("trained_model"))}, kinds={"mlflow"})
    def challenger(context: dg.AssetExecutionContext, trained: dict, mlflow: MLflowResource) -> dg.Output[dict]:
        """A new registered MLflow version of the trained model, aliased `challenger`."""
        run = LoggedRun(trained["run_id"], trained["experiment_id"], trained["model_uri"], "")
        version = mlflow.register(spec, run, tags={"dagster_run_id": context.run.run_id})
        return dg.Output({"version": version, **trained}, metadata={
            "model_version": version,
            "mlflow_run_id": trained["run_id"],
            "registered_model": dg.MetadataValue.url(f"{mlflow.ui_url.rstrip('/')}/#/models/{spec.registered_name}/versions/{version}"),
        })

    @dg.asset(
        key=key("evaluation"),
        group_name=group, op_tags=cpu_tags,
        ins={"dataset": dg.AssetIn(key("training_dataset")), "candidate": dg.AssetIn(key("challenger"))},
        check_specs=[dg.AssetCheckSpec(QUALITY_GATE, asset=key("evaluation"), blocking=True,
                                       description=f"{spec.gate.metric} ≥ {spec.gate.min_value} and no regression beyond "
                                                   f"{spec.gate.max_regression} against the champion.")],
        kinds={"mlflow"},
    )
    def evaluation_asset(dataset: TrainingDataset, candidate: dict, mlflow: MLflowResource):
        """Challenger and current champion scored on the same holdout; the quality gate decides."""
        x_holdout = training.feature_matrix(dataset.holdout, features)
        y_holdout = dataset.holdout[target].to_numpy()
        name = spec.registered_name
        challenger_metrics = evaluation.evaluate(mlflow.load(name, candidate["version"]), x_holdout, y_holdout, spec.metrics)
        champion_version = mlflow.version_for(name, CHAMPION)
        champion_metrics = None
        if champion_version is not None:
            champion_metrics = evaluation.evaluate(mlflow.load(name, champion_version), x_holdout, y_holdout, spec.metrics)
        decision = evaluation.gate_decision(spec.gate, challenger_metrics, champion_metrics)
        mlflow.tag_version(name, candidate["version"], {
            QUALITY_GATE: "passed" if decision.passed else "failed",
            f"{QUALITY_GATE}_reason": decision.reason,
        })
        result = {
            "challenger_version": candidate["version"],
            "champion_version": champion_version,
            "challenger_metrics": challenger_metrics,
            "champion_metrics": champion_metrics,
            "decision": decision.to_dict(),
        }
        yield dg.Output(result, metadata={
            "challenger_version": candidate["version"],
            "champion_version": champion_version or "none",
            "challenger_metrics": dg.MetadataValue.json(challenger_metrics),
            "champion_metrics": dg.MetadataValue.json(champion_metrics or {}),
            "holdout_rows": len(y_holdout),
        })
        yield dg.AssetCheckResult(
            check_name=QUALITY_GATE,
            passed=decision.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=decision.reason,
            metadata={"metric": decision.metric, "challenger": decision.challenger,
                      "champion": decision.champion if decision.champion is not None else "none"},
        )

    @dg.asset(
        key=key("canary"),
        group_name=group, op_tags=cpu_tags,
        ins={"report": dg.AssetIn(key("evaluation")), "dataset": dg.AssetIn(key("training_dataset"))},
        check_specs=[dg.AssetCheckSpec(CANARY_ANALYSIS, asset=key("canary"), blocking=True,
                                       description=f"The challenger served {spec.canary.traffic_percent}% of live traffic "
                                                   "without more errors or much higher latency than the champion.")],
        kinds={"kserve"},
    )
    def canary_release(report: dict, dataset: TrainingDataset, mlflow: MLflowResource, serving: ModelServing):
        """The challenger served beside the champion to a share of traffic; the analysis promotes or rolls it back."""
        version, stable = report["challenger_version"], report["champion_version"]
        verdict = release_canary(spec, mlflow, serving, stable, version, _replay_rows(dataset))
        passed = verdict["outcome"] == canary.PROMOTE
        yield dg.Output({"version": version, "stable": stable, "verdict": verdict}, metadata={
            "outcome": verdict["outcome"],
            "reason": verdict["reason"],
            "canary_version": version,
            "stable_version": stable or "none",
            "verdict": dg.MetadataValue.json(verdict),
        })
        yield dg.AssetCheckResult(check_name=CANARY_ANALYSIS, passed=passed, severity=dg.AssetCheckSeverity.ERROR,
                                  description=verdict["reason"])

    @dg.asset(key=key("champion"), group_name=group, op_tags=cpu_tags, ins={"release": dg.AssetIn(key("canary"))},
              kinds={"mlflow", "kserve"})
    def champion(release: dict, mlflow: MLflowResource, serving: ModelServing) -> dg.Output[dict]:
        """The registered version aliased `champion`, serving 100% of traffic; moves only after gate and canary passed."""
        version = release["version"]
        previous = mlflow.promote(spec.registered_name, version)
        served = serving.deploy(spec.registered_name, version)
        return dg.Output({"version": version, "previous": previous, "url": served.base_url},
                         metadata={"model_version": version, "previous_champion": previous or "none"})

    @dg.asset(
        key=key("endpoint"),
        group_name=group, op_tags=cpu_tags,
        ins={"current": dg.AssetIn(key("champion")), "dataset": dg.AssetIn(key("training_dataset"))},
        check_specs=[dg.AssetCheckSpec(SLO_GUARD, asset=key("endpoint"),
                                       description=f"The new champion keeps p95 ≤ {spec.slo.max_p95_ms:g} ms and errors ≤ "
                                                   f"{spec.slo.max_error_rate:.1%} through its watch window.")],
        kinds={"kserve"},
    )
    def endpoint(current: dict, dataset: TrainingDataset, mlflow: MLflowResource, serving: ModelServing):
        """The champion's live endpoint, watched after promotion; an SLO breach rolls back to the previous champion."""
        import requests

        version, previous = current["version"], current["previous"]
        verdict, served = guard_champion(spec, mlflow, serving, version, previous, _replay_rows(dataset))
        rolled_back = served.version != version
        sample = dataset.holdout[features].head(3).to_numpy(dtype=np.float64).tolist()
        response = requests.post(served.v1_predict_url, json={"instances": sample}, timeout=30)
        response.raise_for_status()
        yield dg.Output(
            {"url": served.base_url, "name": served.name, "version": served.version, "rolled_back": rolled_back},
            metadata={
                "model_version": served.version,
                "rolled_back_from": version if rolled_back else "none",
                "slo": dg.MetadataValue.json(verdict.to_dict()),
                "v1_predict": dg.MetadataValue.url(served.v1_predict_url),
                "v2_infer": dg.MetadataValue.url(served.v2_infer_url),
                "smoke_predictions": dg.MetadataValue.json(response.json()["predictions"]),
            },
        )
        yield dg.AssetCheckResult(check_name=SLO_GUARD, passed=verdict.outcome != canary.ROLLBACK,
                                  severity=dg.AssetCheckSeverity.ERROR,
                                  description=verdict.reason + (f"; rolled back to version {previous}" if rolled_back else ""))

    return [landing_batches, training_dataset, trained_model, challenger, evaluation_asset, canary_release, champion, endpoint]

