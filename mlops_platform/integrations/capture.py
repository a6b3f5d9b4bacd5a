"""Reading what the serving runtime captured: inputs and predictions per request, and the ground truth that came
back, on any fsspec location (`var/capture` locally, the bucket in the cloud).

Layout, written by `mlops_platform.serving.capture`: `{uri}/{model}/inputs/date=…/hour=…/part-….parquet` and
`{uri}/{model}/feedback/date=…/hour=…/part-….parquet`. Labels can also be dropped as CSV or Parquet files with
`request_id`, `label` and optionally `row` columns into `{landing}/{model}/feedback/`.
"""

from __future__ import annotations

import calendar
import io
import time
from typing import Any

import fsspec
import pandas as pd

INPUTS, FEEDBACK = "inputs", "feedback"


class CaptureStore:
    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None, labels_drop_uri: str | None = None):
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options or {}
        self.labels_drop_uri = labels_drop_uri.rstrip("/") if labels_drop_uri else None

    def _files(self, root: str, since: float | None = None) -> tuple[list[str], Any]:
        fs, path = fsspec.core.url_to_fs(root, **self.storage_options)
        if not fs.isdir(path):
            return [], fs
        files = []
        for name in sorted(fs.find(path)):
            if not name.endswith((".parquet", ".csv")):
                continue
            if since is not None and "hour=" in name:  # whole hours older than the window are not even opened
                date = name.split("date=")[1][:10]
                hour = name.split("hour=")[1][:2]
                if calendar.timegm(time.strptime(f"{date} {hour}", "%Y-%m-%d %H")) + 3600 < since:
                    continue
            files.append(name)
        return files, fs

    def _read(self, files: list[str], fs) -> pd.DataFrame:
        frames = []
        for name in files:
            payload = fs.cat_file(name)
            frames.append(pd.read_parquet(io.BytesIO(payload)) if name.endswith(".parquet")
                          else pd.read_csv(io.BytesIO(payload)))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def inputs(self, model: str, since: float | None = None, max_rows: int | None = None) -> pd.DataFrame:
        """Captured rows of the model newer than `since` (epoch seconds), the newest `max_rows` of them."""
        files, fs = self._files(f"{self.uri}/{model}/{INPUTS}", since)
        frame = self._read(files, fs)
        if frame.empty:
            return frame
        if since is not None:
            frame = frame[frame["ts"] >= since]
        frame = frame.sort_values("ts")
        return frame.tail(max_rows).reset_index(drop=True) if max_rows else frame.reset_index(drop=True)

    def feedback(self, model: str, drop_folder: str | None = None) -> pd.DataFrame:
        """Every label that came back, through the feedback route (under the endpoint's name) or a file drop (into
        `{landing}/{drop_folder}/feedback/`, the model's landing folder); the last one for a row wins."""
        files, fs = self._files(f"{self.uri}/{model}/{FEEDBACK}")
        frames = [self._read(files, fs)]
        if self.labels_drop_uri:
            dropped, drop_fs = self._files(f"{self.labels_drop_uri}/{drop_folder or model}/{FEEDBACK}")
            frames.append(self._read(dropped, drop_fs))
        frame = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(not f.empty for f in frames) else pd.DataFrame()
        if frame.empty:
            return pd.DataFrame(columns=["request_id", "row", "label"])
        if "row" not in frame:
            frame["row"] = 0
        frame["request_id"] = frame["request_id"].astype(str)
        frame["row"] = frame["row"].fillna(0).astype(int)
        return frame.drop_duplicates(["request_id", "row"], keep="last")[["request_id", "row", "label"]]

    def labelled(self, inputs: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
        """Captured predictions joined with their ground truth by request id and row."""
        if inputs.empty or feedback.empty:
            return pd.DataFrame(columns=["request_id", "row", "version", "prediction", "label"])
        keyed = inputs.assign(request_id=inputs["request_id"].astype(str), row=inputs["row"].astype(int))
        return keyed.merge(feedback, on=["request_id", "row"], how="inner")
