"""--tracker wandb|mlflow: a run's options, per-epoch metrics and confusion matrix sent to an experiment tracker.

One interface (:class:`Tracker`), one backend per tracker. Only the main process tracks. Both work offline by
default: wandb in mode "offline" (files under ``<result_path>/wandb``, ``wandb sync`` uploads them later) unless
WANDB_MODE says otherwise; mlflow into a local file store ``<result_path>/mlruns`` (``mlflow ui
--backend-store-uri <result_path>/mlruns`` shows it) unless MLFLOW_TRACKING_URI names a server or store; the
experiment is MLFLOW_EXPERIMENT_NAME, else the result folder's name (wandb's project: WANDB_PROJECT).

The tracker's run id is kept in ``<result_path>/tracker_run.json``, so a resumed run (--resume_path) logs into
the same tracker run; a fresh run in the same folder starts a new one. TensorBoard (--tensorboard) is separate.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import uuid
from pathlib import Path

from errors import UserError
from utils import atomic_file

RUN_FILE = "tracker_run.json"
# Per-epoch metrics of main.py's epoch loop -> their names in the tracker (TensorBoard's, with '_' for '/').
METRIC_NAMES = {"loss": "train_loss", "acc": "train_acc", "lr": "lr", "val_loss": "val_loss", "val_acc": "val_acc",
                "val_map": "val_map"}


class Tracker:
    """What main.py sends to a tracker. Backends implement the three methods below."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_image(self, path: Path) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """The run is complete (a stopped run is left open: its resume continues it)."""
        raise NotImplementedError


class WandbTracker(Tracker):
    def __init__(self, options: dict, result_path: Path, run_id: str, *, resumed: bool):
        import wandb  # optional heavy dependency, only with --tracker wandb

        self.wandb = wandb
        self.run = wandb.init(dir=str(result_path), id=run_id, name=result_path.name, config=options,
                              mode=os.environ.get("WANDB_MODE", "offline"), resume="allow" if resumed else None)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_image(self, path: Path) -> None:
        self.run.log({path.stem: self.wandb.Image(str(path))})

    def finish(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    def __init__(self, options: dict, result_path: Path, run_id: str | None, *, resumed: bool):
        from mlflow import MlflowClient  # optional heavy dependency, only with --tracker mlflow
        from mlflow.entities import Metric, Param

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # mlflow 3 refuses its file store unless asked: the local store is what this default is for.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (result_path / "mlruns").resolve().as_uri()
        self.client, self.metric = MlflowClient(tracking_uri=uri), Metric
        if resumed and run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", result_path.name)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=result_path.name).info.run_id
        # Params are write-once in mlflow, so only a new run logs them (a resume's changes are in its log).
        params = [Param(name, json.dumps(value)[:6000]) for name, value in sorted(options.items())]
        for start in range(0, len(params), 100):  # mlflow's limit of params per request
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(1000 * time.time())
        self.client.log_batch(self.run_id, metrics=[self.metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_image(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


BACKENDS = {"wandb": WandbTracker, "mlflow": MlflowTracker}
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}  # the module each backend imports
PIP_NAMES = {"wandb": "wandb", "mlflow": "mlflow-skinny (or mlflow)"}


def check_available(name: str) -> None:
    """At start-up, before any work: UserError when --tracker names a tracker whose package is missing."""
    if name != "none" and importlib.util.find_spec(PACKAGES[name]) is None:
        raise UserError(f"--tracker {name} needs the {PACKAGES[name]} package, which is not installed: "
                        f"pip install {PIP_NAMES[name]} (or leave --tracker out)")


def open_tracker(name: str, options: dict, result_path: Path, *, resumed: bool) -> Tracker | None:
    """The tracker run of --result_path (None for 'none'): the stored one when ``resumed`` and it was of the
    same tracker, else a new one, whose id is stored for a later resume."""
    if name == "none":
        return None
    result_path = Path(result_path)
    stored = _stored_run(result_path)
    same = resumed and stored.get("tracker") == name
    run_id = stored.get("run_id") if same else None
    if name == "wandb":
        run_id = run_id or uuid.uuid4().hex[:12]
    tracker = BACKENDS[name](options, result_path, run_id, resumed=same)
    _store_run(result_path, name, getattr(tracker, "run_id", run_id))
    return tracker


def log_epoch(tracker: Tracker | None, epoch: int, metrics: dict) -> None:
    """An epoch's train/val metrics (nothing without a tracker)."""
    if tracker is not None:
        tracker.log_metrics({METRIC_NAMES[k]: v for k, v in metrics.items() if k in METRIC_NAMES}, step=epoch)


def _stored_run(result_path: Path) -> dict:
    try:
        return json.loads((result_path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _store_run(result_path: Path, name: str, run_id: str) -> None:
    with atomic_file(result_path / RUN_FILE) as path:
        path.write_text(json.dumps({"tracker": name, "run_id": run_id}))
