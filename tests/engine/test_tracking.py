"""--tracker: mlflow for real (a local file store in the result folder), wandb through a test double that records
its calls; offline by default, the same tracker run after a resume, one line and exit 2 when the package is
missing."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import pytest

from engine import tracking
from opts import TRACKER_CHOICES
from tests.conftest import dataset_args, run_main

FAKE_WANDB = '''
CALLS = []


class Image:
    def __init__(self, path):
        self.path = path


class _Run:
    def log(self, data, step=None):
        CALLS.append(("log", data, step))

    def finish(self):
        CALLS.append(("finish",))


def init(**kwargs):
    CALLS.append(("init", kwargs))
    return _Run()
'''


def test_every_tracker_choice_has_a_backend():
    assert set(TRACKER_CHOICES) == {"none", *tracking.BACKENDS}


@pytest.fixture()
def fake_wandb(tmp_path, monkeypatch):
    folder = tmp_path / "fake_packages" / "wandb"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(FAKE_WANDB))
    monkeypatch.syspath_prepend(str(folder.parent))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    yield
    sys.modules.pop("wandb", None)


def test_wandb_runs_offline_logs_epochs_and_images_and_a_resume_continues_its_run(fake_wandb, tmp_path):
    tracking.check_available("wandb")  # the double is importable: no error
    out = tmp_path / "run"
    out.mkdir()
    tracker = tracking.open_tracker("wandb", {"learning_rate": 0.1}, out, resumed=False)
    tracking.log_epoch(tracker, 1, {"loss": 1.5, "acc": 0.5, "lr": 0.1, "val_loss": 1.0, "val_acc": 0.75,
                                    "clips": 8, "time": 2.0})
    (out / "val_confusion.png").write_bytes(b"png")
    tracker.log_image(out / "val_confusion.png")
    tracker.finish()
    import wandb  # the test double (optional heavy dependency in real use)

    (_, init), (_, metrics, step), (_, image, _), finish = wandb.CALLS
    run_id = json.loads((out / tracking.RUN_FILE).read_text())["run_id"]
    assert init == {"dir": str(out), "id": run_id, "name": "run", "config": {"learning_rate": 0.1}, "mode": "offline",
                    "resume": None}
    assert metrics == {"train_loss": 1.5, "train_acc": 0.5, "lr": 0.1, "val_loss": 1.0, "val_acc": 0.75} and step == 1
    assert image["val_confusion"].path == str(out / "val_confusion.png") and finish == ("finish",)
    wandb.CALLS.clear()
    tracking.open_tracker("wandb", {}, out, resumed=True)
    assert wandb.CALLS[0][1]["id"] == run_id and wandb.CALLS[0][1]["resume"] == "allow"


def test_wandb_mode_from_the_environment(fake_wandb, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    tracking.open_tracker("wandb", {}, tmp_path, resumed=False)
    import wandb  # the test double (optional heavy dependency in real use)

    assert wandb.CALLS[0][1]["mode"] == "online"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_a_missing_tracker_package_is_one_line_and_exit_2_before_anything_is_written(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    proc = run_main([*dataset_args(tiny_dataset, out), "--n_epochs", 1, "--tracker", "wandb"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --tracker wandb needs the wandb package, which is not installed: pip install wandb (or leave "
        "--tracker out)"]
    assert not out.exists()


def test_mlflow_logs_options_metrics_and_confusion_into_a_local_store_and_a_resume_continues_the_run(
        tiny_dataset, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient  # optional dependency of --tracker mlflow

    out = tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": None}  # the default: a file store in the result folder
    runs = [run_main([*dataset_args(tiny_dataset, out), "--n_epochs", 1, "--tracker", "mlflow", "--inference",
                      "--checkpoint", 1], env=env),
            run_main([*dataset_args(tiny_dataset, out), "--n_epochs", 2, "--tracker", "mlflow", "--inference",
                      "--checkpoint", 1, "--resume_path", "auto"], env=env)]
    for proc in runs:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "run"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == json.loads((out / tracking.RUN_FILE).read_text())["run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.params["n_epochs"] == "1" and run.data.params["tracker"] == '"mlflow"'  # the first run's
    for name in ("train_loss", "train_acc", "lr", "val_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2], name
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["val_confusion.png"]
    assert (out / "val_confusion.csv").is_file()
    assert json.loads((out / "opts.json").read_text())["tracker"] == "mlflow"
