"""The asset graph of one model, built from its spec:
landing → dataset → model → challenger → gate → canary → champion → watched endpoint."""

import base64
import dataclasses
import hashlib
import json
import time

import dagster as dg
import numpy as np
import pandas as pd

from mlops_platform.core import data, evaluation, training
from mlops_platform.core import metrics as metric_table
from mlops_platform.core.canary import Outcome
from mlops_platform.core.spec import ModelSpec
from mlops_platform.defs.release import begin_release, guard_champion, release_canary, release_ttl, serving_options
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
from mlops_platform.integrations.registry import Alias, TrainingData

GPU_POOL = "gpu"
BATCHES_VALID = "batches_valid"
QUALITY_GATE = "quality_gate"
CANARY_ANALYSIS = "canary_analysis"
SLO_GUARD = "slo_guard"
BATCH_RECORD = "mlops_batches"


def _png_markdown(png: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _replay_rows(spec: ModelSpec, frame: pd.DataFrame, limit: int = 256) -> list[list | dict]:
    """Rows as a V1 client sends them: plain lists of numbers, or objects keyed by feature for typed columns."""
    head = frame.head(limit)
    if spec.dataset.all_numeric:
        return head[spec.dataset.feature_names].to_numpy(dtype=np.float64).tolist()
    return data.json_rows(head, spec.dataset)


def _data_version(batches: list[dict]) -> str:
    """One version for a set of batches: the hash of their contents' hashes, whatever their names or order."""
    return hashlib.sha256(json.dumps(sorted(b["sha256"] for b in batches)).encode()).hexdigest()


def _new_batches(dataset: TrainingDataset, champion_batches: list[dict] | None) -> list[str]:
    """The batches in this data that the champion was not trained on (by content)."""
    if champion_batches is None:
        return []
    seen = {b["sha256"] for b in champion_batches}
    return [b["name"] for b in dataset.batches if b["sha256"] not in seen]


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
    features = spec.dataset.feature_names
    target = spec.dataset.target
    key = lambda name: asset_key(spec, name)

    @dg.asset(
        key=key("landing_batches"),
        group_name=group, op_tags=cpu_tags,
        check_specs=[dg.AssetCheckSpec(BATCHES_VALID, asset=key("landing_batches"), blocking=True,
                                       description="Every batch matches the spec's column types; bad landing batches "
                                                   "are quarantined, bad source files are named and left in place.")],
        kinds={"pandas"},
    )
    def landing_batches(context: dg.AssetExecutionContext, landing: LandingResource):
        """The model's batches (its landing folder and its own source files), each validated against the spec's
        column types. A bad landing batch is moved to quarantine; a bad source file is the user's and stays where it
        is, named in the check with what is wrong and how to set it aside."""
        catalog = landing.get_catalog(spec)
        store = catalog.store
        frames, accepted, quarantined, refused = [], [], {}, {}
        for batch in catalog.batches():
            if batch.origin == "landing":
                problem = data.batch_name_problem(batch.name) or (
                    "symbolic link: refused, never followed" if store.is_link(spec.name, batch.name) else None)
            else:
                problem = None
            payload = b"" if problem else catalog.read(batch)
            if problem:
                frame, problems = None, [problem]
            else:
                frame, report = data.validate_batch(batch.name, payload, spec.dataset)
                problems = report.problems
            if not problems:
                frames.append(frame)
                accepted.append({"name": batch.name, "origin": batch.origin, "uri": batch.uri, "token": batch.token,
                                 "sha256": hashlib.sha256(payload).hexdigest(), "rows": len(frame)})
                continue
            reason = "; ".join(problems)
            if batch.origin == "landing":
                quarantined[batch.name] = {"reason": reason, "moved_to": store.quarantine(spec.name, batch.name, reason)}
                context.log.warning(f"quarantined batch {batch.name}: {reason}")
            else:
                refused[batch.name] = {"reason": reason, "uri": batch.uri}
                context.log.error(f"source file {batch.uri} cannot be used: {reason}")
        combined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=spec.dataset.columns)
        combined.attrs[BATCH_RECORD] = accepted  # travels with the rows to the dataset, whichever run is alongside
        version = _data_version(accepted)
        yield dg.Output(combined, data_version=dg.DataVersion(version), metadata={
            "rows": len(combined),
            "accepted_batches": dg.MetadataValue.json(accepted),
            "quarantined_batches": dg.MetadataValue.json(quarantined),
            "refused_source_files": dg.MetadataValue.json(refused),
        })
        notes = []
        if quarantined:
            notes.append(f"{len(quarantined)} batch(es) quarantined: " + "; ".join(f"{n}: {q['reason']}" for n, q in quarantined.items()))
        if refused:
            notes.append(f"{len(refused)} source file(s) refused and left in place (fix them, or set one aside with "
                         f"`python -m mlops_platform.cli exclude --model {spec.name} --batch NAME --reason ...`): "
                         + "; ".join(f"{n}: {r['reason']}" for n, r in refused.items()))
        if not notes and combined.empty:
            notes.append(f"no valid batches in landing or in {spec.dataset.source}")
        yield dg.AssetCheckResult(
            check_name=BATCHES_VALID,
            passed=bool(not notes),
            severity=dg.AssetCheckSeverity.ERROR,
            description=" | ".join(notes) or f"{len(accepted)} batch(es), {len(combined)} rows, all valid",
            metadata={"quarantined": dg.MetadataValue.json(quarantined), "refused": dg.MetadataValue.json(refused)},
        )

    @dg.asset(key=key("training_dataset"), group_name=group, op_tags=cpu_tags, ins={"batches": dg.AssetIn(key("landing_batches"))}, kinds={"pandas"})
    def training_dataset(batches: pd.DataFrame) -> dg.Output[TrainingDataset]:
        """Validated rows split into training and holdout, with the task they make and reference statistics for
        drift checks. Its data version is the hash of the exact batches it holds."""
        try:
            task, classes = data.resolve_task(batches[target], spec.dataset)
        except data.TaskError as exc:
            raise dg.Failure(description=f"{spec.name}: {exc}") from None
        accepted = batches.attrs.get(BATCH_RECORD, [])
        split = data.split_dataset(batches, spec.dataset)
        reference = data.reference_statistics(split.train, spec.dataset)
        version = _data_version(accepted)
        dataset = TrainingDataset(train=split.train, holdout=split.holdout, reference=reference, features=features,
                                  task=task, batches=accepted, data_version=version)
        return dg.Output(dataset, data_version=dg.DataVersion(version), metadata={
            "task": str(task),
            "task_inferred": spec.dataset.declared_task is None,
            "classes": dg.MetadataValue.json([str(c) for c in classes] if classes else []),
            "train_rows": len(split.train),
            "holdout_rows": len(split.holdout),
            "batches": dg.MetadataValue.json([b["name"] for b in accepted]),
            "target_distribution": dg.MetadataValue.json(reference["target_distribution"]),
            "preview": dg.MetadataValue.md(split.train.head(5).to_markdown(index=False)),
        })

    @dg.asset(key=key("trained_model"), group_name=group, ins={"dataset": dg.AssetIn(key("training_dataset"))},
              kinds={spec.estimator.framework, "mlflow"}, op_tags=train_tags, pool=GPU_POOL if on_gpu else None)
    def trained_model(context: dg.AssetExecutionContext, dataset: TrainingDataset, mlflow: MLflowResource) -> dg.Output[TrainedModel]:
        """The spec's pipeline fitted on the training rows and logged to MLflow with its holdout metrics and the exact
        data it was trained on."""
        metric_names = spec.metrics_for(dataset.task)
        wrong = [m for m in metric_names if dataset.task not in metric_table.metric(m).tasks]
        if wrong:
            raise dg.Failure(description=f"{spec.name}: metrics {wrong} do not apply to a {dataset.task} task "
                                         f"(the target made it one); {dataset.task} has {metric_table.metrics_for(dataset.task)}")
        started = time.perf_counter()
        model = training.train(spec, dataset.task, dataset.train)
        train_seconds = time.perf_counter() - started
        x_holdout = data.model_input(dataset.holdout, spec.dataset)
        y_holdout = dataset.holdout[target].to_numpy()
        metrics = evaluation.evaluate(model, x_holdout, y_holdout, metric_names)
        plot, png = evaluation.diagnostic_png(model, x_holdout, y_holdout, f"{spec.name} holdout")
        run = mlflow.get_registry().log_training(
            spec, model, TrainingData(dataset.batches, dataset.data_version, dataset.train),
            params=training.hyperparameters(spec),
            metrics=metrics,
            tags={"dagster_run_id": context.run.run_id, "model": spec.name, "framework": spec.estimator.framework,
                  "task": str(dataset.task)},
            images={f"{plot}.png": png},
            documents={"reference_statistics.json": dataset.reference},
        )
        return dg.Output(TrainedModel(run=run, metrics=metrics), metadata={
            "mlflow_run_id": run.run_id,
            "mlflow_run": dg.MetadataValue.url(run.url),
            "task": str(dataset.task),
            "data_version": dataset.data_version,
            "train_seconds": round(train_seconds, 3),
            **{f"holdout_{k}": round(v, 4) for k, v in metrics.items()},
            plot: _png_markdown(png, plot.replace("_", " ")),
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
        x_holdout = data.model_input(dataset.holdout, spec.dataset)
        y_holdout = dataset.holdout[target].to_numpy()
        name = spec.registered_name
        metric_names = spec.metrics_for(dataset.task)
        challenger_metrics = evaluation.evaluate(registry.load(name, candidate.version), x_holdout, y_holdout, metric_names)
        champion_version = registry.version_for(name, Alias.CHAMPION)
        champion_metrics, new_batches = None, []
        if champion_version is not None:
            champion_metrics = evaluation.evaluate(registry.load(name, champion_version), x_holdout, y_holdout, metric_names)
            new_batches = _new_batches(dataset, registry.trained_batches(name, champion_version))
        decision = evaluation.gate_decision(spec.gate, challenger_metrics, champion_metrics)
        if not decision.passed and new_batches:
            decision = dataclasses.replace(decision, reason=(
                f"{decision.reason}. Batches new since the champion's data: {new_batches}; to set a bad one aside: "
                f"python -m mlops_platform.cli exclude --model {spec.name} --batch NAME --reason TEXT"))
        registry.record_gate(name, candidate.version, decision.passed, decision.reason)
        report = GateReport(candidate.version, champion_version, challenger_metrics, champion_metrics, decision)
        yield dg.Output(report, metadata={
            "challenger_version": candidate.version,
            "champion_version": champion_version or "none",
            "challenger_metrics": dg.MetadataValue.json(challenger_metrics),
            "champion_metrics": dg.MetadataValue.json(champion_metrics or {}),
            "holdout_rows": len(y_holdout),
            "new_batches_since_champion": dg.MetadataValue.json(new_batches),
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
                                     report.challenger_version, _replay_rows(spec, dataset.holdout), owner=owner)
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
            backend.deploy(spec.registered_name, release.version, **serving_options(spec))
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
                                             _replay_rows(spec, dataset.holdout))
        finally:
            lock.release(owner)
        state = EndpointState(served.name, served.version, served.base_url, rolled_back=served.version != current.version)
        sample = _replay_rows(spec, dataset.holdout, 3)
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
