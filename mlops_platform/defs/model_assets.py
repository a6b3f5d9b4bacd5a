"""The asset graph of one model, built from its spec:
landing → dataset → model → challenger → gate → canary → champion → watched endpoint."""

import base64
import time

import dagster as dg
import numpy as np
import pandas as pd

from mlops_platform.core import data, evaluation, training
from mlops_platform.core.canary import Outcome
from mlops_platform.core.spec import ModelSpec
from mlops_platform.defs.release import batching, begin_release, guard_champion, release_canary, release_ttl
from mlops_platform.defs.resources import LandingResource, MLflowResource, ServingResource
from mlops_platform.defs.types import (
    CanaryRelease,
    ChampionChange,
    EndpointState,
    GateReport,
    RegisteredVersion,
    TrainedModel,
    TrainingDataset,
)
from mlops_platform.integrations.registry import Alias

GPU_POOL = "gpu"
BATCHES_VALID = "batches_valid"
QUALITY_GATE = "quality_gate"
CANARY_ANALYSIS = "canary_analysis"
SLO_GUARD = "slo_guard"


def _png_markdown(png: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _replay_rows(dataset: TrainingDataset, limit: int = 256) -> list[list[float]]:
    return dataset.holdout[dataset.features].head(limit).to_numpy(dtype=np.float64).tolist()


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
    key = lambda name: asset_key(spec, name)

    @dg.asset(
        key=key("landing_batches"),
        group_name=group, op_tags=cpu_tags,
        check_specs=[dg.AssetCheckSpec(BATCHES_VALID, asset=key("landing_batches"), blocking=True,
                                       description="Every landing batch matches the spec's schema; bad ones are quarantined.")],
        kinds={"pandas"},
    )
    def landing_batches(context: dg.AssetExecutionContext, landing: LandingResource):
        """Raw batches read from the landing location; bad batches are moved to quarantine."""
        store = landing.get_store()
        frames, accepted, quarantined = [], [], {}
        for name in store.list_batches(spec.name):
            refused = data.batch_name_problem(name) or (
                "symbolic link: refused, never followed" if store.is_link(spec.name, name) else None)
            if refused:
                frame, problems = None, [refused]
            else:
                frame, report = data.validate_batch(name, store.read(spec.name, name), spec.dataset)
                problems = report.problems
            if not problems:
                frames.append(frame)
                accepted.append(name)
            else:
                reason = "; ".join(problems)
                quarantined[name] = {"reason": reason, "moved_to": store.quarantine(spec.name, name, reason)}
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
    def trained_model(context: dg.AssetExecutionContext, dataset: TrainingDataset, mlflow: MLflowResource) -> dg.Output[TrainedModel]:
        """The spec's estimator fitted on the training rows and logged to MLflow with its holdout metrics."""
        started = time.perf_counter()
        model = training.train(spec, dataset.train)
        train_seconds = time.perf_counter() - started
        x_holdout = training.feature_matrix(dataset.holdout, features)
        y_holdout = dataset.holdout[target].to_numpy()
        metrics = evaluation.evaluate(model, x_holdout, y_holdout, spec.metrics)
        png = evaluation.confusion_matrix_png(model, x_holdout, y_holdout, f"{spec.name} holdout")
        run = mlflow.get_registry().log_training(
            spec, model, dataset.train,
            params=training.hyperparameters(spec),
            metrics=metrics,
            tags={"dagster_run_id": context.run.run_id, "model": spec.name, "framework": spec.estimator.framework},
            images={"confusion_matrix.png": png},
            documents={"reference_statistics.json": dataset.reference},
        )
        return dg.Output(TrainedModel(run=run, metrics=metrics), metadata={
            "mlflow_run_id": run.run_id,
            "mlflow_run": dg.MetadataValue.url(run.url),
            "train_seconds": round(train_seconds, 3),
            **{f"holdout_{k}": round(v, 4) for k, v in metrics.items()},
            "confusion_matrix": _png_markdown(png, "confusion matrix"),
        })

    @dg.asset(key=key("challenger"), group_name=group, op_tags=cpu_tags, ins={"trained": dg.AssetIn(key("trained_model"))}, kinds={"mlflow"})
    def challenger(context: dg.AssetExecutionContext, trained: TrainedModel, mlflow: MLflowResource) -> dg.Output[RegisteredVersion]:
        """A new registered MLflow version of the trained model, aliased `challenger`."""
        registry = mlflow.get_registry()
        version = registry.register(spec, trained.run, tags={"dagster_run_id": context.run.run_id})
        return dg.Output(RegisteredVersion(version=version, trained=trained), metadata={
            "model_version": version,
            "mlflow_run_id": trained.run.run_id,
            "registered_model": dg.MetadataValue.url(registry.version_url(spec.registered_name, version)),
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
    def evaluation_asset(dataset: TrainingDataset, candidate: RegisteredVersion, mlflow: MLflowResource):
        """Challenger and current champion scored on the same holdout; the quality gate decides."""
        registry = mlflow.get_registry()
        x_holdout = training.feature_matrix(dataset.holdout, features)
        y_holdout = dataset.holdout[target].to_numpy()
        name = spec.registered_name
        challenger_metrics = evaluation.evaluate(registry.load(name, candidate.version), x_holdout, y_holdout, spec.metrics)
        champion_version = registry.version_for(name, Alias.CHAMPION)
        champion_metrics = None
        if champion_version is not None:
            champion_metrics = evaluation.evaluate(registry.load(name, champion_version), x_holdout, y_holdout, spec.metrics)
        decision = evaluation.gate_decision(spec.gate, challenger_metrics, champion_metrics)
        registry.record_gate(name, candidate.version, decision.passed, decision.reason)
        report = GateReport(candidate.version, champion_version, challenger_metrics, champion_metrics, decision)
        yield dg.Output(report, metadata={
            "challenger_version": candidate.version,
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
    def canary_release(context: dg.AssetExecutionContext, report: GateReport, dataset: TrainingDataset,
                       mlflow: MLflowResource, serving: ServingResource):
        """The challenger served beside the champion to a share of traffic; the analysis promotes or rolls it back."""
        backend, owner = serving.get_backend(), context.run.run_id
        lock = begin_release(spec, backend, owner)  # held through promotion and the watch; released on any failure
        try:
            release = release_canary(spec, mlflow.get_registry(), backend, report.champion_version,
                                     report.challenger_version, _replay_rows(dataset), owner=owner)
        except BaseException:
            lock.release(owner)
            raise
        if not release.passed:
            lock.release(owner)
        verdict = release.verdict
        yield dg.Output(release, metadata={
            "outcome": str(verdict.outcome),
            "reason": verdict.reason,
            "canary_version": release.version,
            "stable_version": release.stable or "none",
            "verdict": dg.MetadataValue.json(release.to_dict()),
        })
        yield dg.AssetCheckResult(check_name=CANARY_ANALYSIS, passed=release.passed, severity=dg.AssetCheckSeverity.ERROR,
                                  description=verdict.reason)

    @dg.asset(key=key("champion"), group_name=group, op_tags=cpu_tags, ins={"release": dg.AssetIn(key("canary"))},
              kinds={"mlflow", "kserve"})
    def champion(context: dg.AssetExecutionContext, release: CanaryRelease, mlflow: MLflowResource,
                 serving: ServingResource) -> dg.Output[ChampionChange]:
        """The registered version aliased `champion`, serving 100% of traffic; moves only after gate and canary passed."""
        backend, owner = serving.get_backend(), context.run.run_id
        lock = backend.release_lock(spec.registered_name)
        try:
            lock.renew(owner, release_ttl(spec))  # a release that lost its lock must not promote
            previous = mlflow.get_registry().promote(spec.registered_name, release.version)
            backend.deploy(spec.registered_name, release.version, batching=batching(spec))
        except BaseException:
            lock.release(owner)
            raise
        return dg.Output(ChampionChange(release.version, previous),
                         metadata={"model_version": release.version, "previous_champion": previous or "none"})

    @dg.asset(
        key=key("endpoint"),
        group_name=group, op_tags=cpu_tags,
        ins={"current": dg.AssetIn(key("champion")), "dataset": dg.AssetIn(key("training_dataset"))},
        check_specs=[dg.AssetCheckSpec(SLO_GUARD, asset=key("endpoint"),
                                       description=f"The new champion keeps p95 ≤ {spec.slo.max_p95_ms:g} ms and errors ≤ "
                                                   f"{spec.slo.max_error_rate:.1%} through its watch window.")],
        kinds={"kserve"},
    )
    def endpoint(context: dg.AssetExecutionContext, current: ChampionChange, dataset: TrainingDataset, mlflow: MLflowResource,
                 serving: ServingResource):
        """The champion's live endpoint, watched after promotion; an SLO breach rolls back to the previous champion."""
        import requests

        backend, owner = serving.get_backend(), context.run.run_id
        lock = backend.release_lock(spec.registered_name)
        try:
            lock.renew(owner, release_ttl(spec))
            verdict, served = guard_champion(spec, mlflow.get_registry(), backend, current.version, current.previous,
                                             _replay_rows(dataset))
        finally:
            lock.release(owner)
        state = EndpointState(served.name, served.version, served.base_url, rolled_back=served.version != current.version)
        sample = dataset.holdout[features].head(3).to_numpy(dtype=np.float64).tolist()
        response = requests.post(served.v1_predict_url, json={"instances": sample}, timeout=30)
        response.raise_for_status()
        yield dg.Output(state, metadata={
            "model_version": state.version,
            "rolled_back_from": current.version if state.rolled_back else "none",
            "slo": dg.MetadataValue.json(verdict.to_dict()),
            "v1_predict": dg.MetadataValue.url(served.v1_predict_url),
            "v2_infer": dg.MetadataValue.url(served.v2_infer_url),
            "smoke_predictions": dg.MetadataValue.json(response.json()["predictions"]),
        })
        rollback_note = f"; rolled back to version {current.previous}" if state.rolled_back else ""
        yield dg.AssetCheckResult(check_name=SLO_GUARD, passed=verdict.outcome != Outcome.ROLLBACK,
                                  severity=dg.AssetCheckSeverity.ERROR, description=verdict.reason + rollback_note)

    return [landing_batches, training_dataset, trained_model, challenger, evaluation_asset, canary_release, champion, endpoint]
