"""Monitoring per model: the drift report (captured inputs against the champion's training data, prediction drift,
live quality from labels that came back), its checks, its schedule, and the sensor that retrains when drift or
falling live quality says so. The retrain is the model's own train-and-deploy job: drift can start it, never skip
its gate or its canary."""


import base64
import io
import json
import time
from typing import Any

import dagster as dg
import pandas as pd

from mlops_platform.core import data, drift
from mlops_platform.core.spec import ModelSpec
from mlops_platform.defs.resources import LandingResource, MLflowResource, ServingResource
from mlops_platform.integrations.registry import Alias
from mlops_platform.integrations.serving import UnsupportedOperation

DRIFT = "feature_drift"
LIVE_QUALITY = "live_quality"
MAX_PLOTS = 12


def drift_key(spec: ModelSpec) -> dg.AssetKey:
    return dg.AssetKey([spec.name, "drift_report"])


def _bars_png(feature: drift.FeatureDrift) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(feature.reference_fractions)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(4.5, 2.6), dpi=80)
    try:
        ax.bar(x - 0.2, list(feature.reference_fractions.values()), 0.4, label="training")
        ax.bar(x + 0.2, [feature.current_fractions.get(k, 0.0) for k in labels], 0.4, label="live")
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=6)
        ax.set_title(f"{feature.feature}: PSI {feature.psi:.3f}{' — drift' if feature.drifted else ''}", fontsize=8)
        ax.legend(fontsize=6)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _png_md(png: bytes, title: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _new_rows_since_champion(spec: ModelSpec, landing: LandingResource, trained: list[dict] | None) -> int:
    """Labelled rows in batches the champion was not trained on: what a retrain would learn from."""
    seen = {(b["name"], b["token"]) for b in trained or []}
    catalog = landing.get_catalog(spec)
    rows = 0
    for batch in catalog.batches():
        if (batch.name, batch.token) not in seen:
            frame, _ = data.validate_batch(batch.name, catalog.read(batch), spec.dataset)
            rows += 0 if frame is None else len(frame)
    return rows


def build_monitoring(spec: ModelSpec, cpu_step_tags: dict | None = None) -> dg.AssetsDefinition:
    key = drift_key(spec)
    settings = spec.monitoring
    floor = settings.quality

    @dg.asset(
        key=key, group_name=spec.name, op_tags=cpu_step_tags or {}, kinds={"mlflow", "kserve"},
        check_specs=[
            dg.AssetCheckSpec(DRIFT, asset=key, description=f"Fewer than {settings.retrain_drift_share:.0%} of the "
                              f"features drift (PSI ≥ {settings.psi_threshold} and p < {settings.p_value})."),
            dg.AssetCheckSpec(LIVE_QUALITY, asset=key, description=(
                f"Live {floor.metric} on labelled predictions stays within {floor.bound}" if floor
                else "Live quality on labelled predictions (no floor declared: reported, never failed)")),
        ],
    )
    def drift_report(context: dg.AssetExecutionContext, mlflow: MLflowResource, landing: LandingResource,
                     serving: ServingResource):
        """Captured live inputs against the champion's training data, feature by feature with a test fit for each
        column type, the predictions against the training target, and live quality where labels came back."""
        registry = mlflow.get_registry()
        name = spec.registered_name
        version = registry.version_for(name, Alias.CHAMPION)
        if version is None:
            yield dg.Output(None, metadata={"note": "no champion yet: nothing serves, nothing to compare"})
            for check in (DRIFT, LIVE_QUALITY):
                yield dg.AssetCheckResult(check_name=check, passed=True, description="no champion yet")
            return
        reference, task = registry.reference_data(name, version)
        store = landing.get_capture_store()
        since = time.time() - settings.window_hours * 3600
        captured = store.inputs(name, since=since, max_rows=settings.max_rows)  # written under the endpoint's name
        served = captured[captured["version"].astype(str) == version] if not captured.empty else captured
        labelled = store.labelled(served, store.feedback(name, drop_folder=spec.name))
        thresholds = drift.DriftSettings(settings.psi_threshold, settings.p_value, settings.min_rows)
        report = drift.drift_report(spec.dataset, task, reference, served if not served.empty else
                                    pd.DataFrame(columns=[*spec.dataset.feature_names, "prediction"]),
                                    labelled, thresholds)
        new_rows = _new_rows_since_champion(spec, landing, registry.trained_batches(name, version))
        drifting = report.enough_rows and report.share_drifted >= settings.retrain_drift_share
        quality_value = report.quality.get(floor.metric) if floor else None
        quality_breached = False
        if floor is not None and quality_value is not None and report.labelled_rows >= settings.min_rows // 2:
            higher = floor.min_value is not None
            quality_breached = quality_value < floor.bound if higher else quality_value > floor.bound
        retrain = (drifting or quality_breached) and new_rows >= settings.min_new_rows
        document = {**report.to_dict(), "champion_version": version, "task": str(task), "new_rows": new_rows,
                    "retrain_recommended": retrain, "computed_at": time.time()}
        plots = sorted(report.features, key=lambda f: -f.psi)[:MAX_PLOTS]
        pngs = {f"drift_{f.feature}.png": _bars_png(f) for f in plots}
        if report.prediction is not None:
            pngs["drift_prediction.png"] = _bars_png(report.prediction)
        run_url = registry.log_monitoring(name, version, document, pngs)
        try:
            serving.get_backend().publish_monitoring(name, version, {f.feature: f.psi for f in report.features},
                                                     report.quality)
        except UnsupportedOperation as exc:
            context.log.warning(f"drift gauges not published: {exc}")
        metadata: dict[str, Any] = {
            "champion_version": version,
            "captured_rows": report.rows,
            "enough_rows": report.enough_rows,
            "drifted_features": dg.MetadataValue.json(report.drifted),
            "share_drifted": round(report.share_drifted, 3),
            "psi": dg.MetadataValue.json({f.feature: round(f.psi, 4) for f in report.features}),
            "prediction_psi": round(report.prediction.psi, 4) if report.prediction else "n/a",
            "labelled_rows": report.labelled_rows,
            "live_quality": dg.MetadataValue.json(report.quality),
            "new_rows_since_champion": new_rows,
            "retrain_recommended": retrain,
            "mlflow_run": dg.MetadataValue.url(run_url),
            **{name.removesuffix(".png"): _png_md(png, name) for name, png in pngs.items()},
        }
        yield dg.Output(document, metadata=metadata)
        if not report.enough_rows:
            drift_note = f"{report.rows} captured rows of the champion, fewer than {settings.min_rows}: no verdict"
        else:
            drift_note = (f"{len(report.drifted)} of {len(report.features)} features drift: {report.drifted}"
                          if report.drifted else f"no feature drifts over {report.rows} captured rows")
        yield dg.AssetCheckResult(check_name=DRIFT, passed=not drifting, severity=dg.AssetCheckSeverity.WARN,
                                  description=drift_note, metadata={"share_drifted": report.share_drifted})
        if floor is None or quality_value is None:
            quality_note = (f"live quality {report.quality} on {report.labelled_rows} labelled rows"
                            if report.quality else "no labelled predictions yet")
        else:
            quality_note = f"live {floor.metric}={quality_value:.4f} on {report.labelled_rows} labelled rows; bound {floor.bound}"
        yield dg.AssetCheckResult(check_name=LIVE_QUALITY, passed=not quality_breached,
                                  severity=dg.AssetCheckSeverity.ERROR, description=quality_note)

    return drift_report


def build_monitor_job_and_schedule(spec: ModelSpec) -> tuple[Any, dg.ScheduleDefinition]:
    job = dg.define_asset_job(f"{spec.name}_monitor", selection=dg.AssetSelection.assets(drift_key(spec)),
                              description=f"Compute {spec.name}'s drift report now.")
    schedule = dg.ScheduleDefinition(name=f"{spec.name}_drift_report", job=job, cron_schedule=spec.monitoring.report_cron,
                                     execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
                                     description=f"{spec.name}'s drift report on a schedule ({spec.monitoring.report_cron} UTC).")
    return job, schedule


def build_drift_retrain_sensor(spec: ModelSpec, train_job: Any) -> dg.SensorDefinition:
    """Starts the model's train-and-deploy job when a drift report recommends it (drift or live quality past the
    spec's thresholds, with enough new labelled data), at most once per report and once per cool-down."""
    cooldown = spec.monitoring.cooldown_minutes * 60

    @dg.sensor(name=f"{spec.name}_drift_retrain_sensor", job=train_job, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Retrains {spec.name} (through gate and canary) when its drift report recommends it.")
    def drift_retrain_sensor(context: dg.SensorEvaluationContext):
        state = json.loads(context.cursor) if context.cursor else {"report": None, "fired_at": 0.0}
        event = context.instance.get_latest_materialization_event(drift_key(spec))
        if event is None or event.asset_materialization is None:
            return dg.SkipReason("no drift report yet")
        report_id = event.storage_id if hasattr(event, "storage_id") else event.timestamp
        meta = event.asset_materialization.metadata
        if state["report"] == report_id:
            return dg.SkipReason("this drift report was already considered")
        state["report"] = report_id
        recommended = bool(meta.get("retrain_recommended") and meta["retrain_recommended"].value)
        now = time.time()
        if recommended and now - state["fired_at"] < cooldown:
            context.update_cursor(json.dumps(state))
            left = cooldown - (now - state["fired_at"])
            return dg.SkipReason(f"drift says retrain, but the last drift retrain was {now - state['fired_at']:.0f}s ago; "
                                 f"cool-down ends in {left:.0f}s")
        if not recommended:
            context.update_cursor(json.dumps(state))
            return dg.SkipReason("the latest drift report does not recommend a retrain")
        state["fired_at"] = now
        context.update_cursor(json.dumps(state))
        drifted = meta["drifted_features"].value if "drifted_features" in meta else []
        return dg.RunRequest(run_key=f"drift-{report_id}", tags={"trigger": "drift", "drifted": ",".join(drifted)[:200]})

    return drift_retrain_sensor

