"""Train the same small model twice on a learnable synthetic task: fast data path vs the reference path.

Usage: ``python -m util_scripts.bench_accuracy [--work_dir DIR] [--n_epochs 20] [--learning_rate 0.01] [--seed 1]``

Run 1 uses the defaults (uint8 clips, JPEG draft/simplejpeg decode, normalisation in the training
step); run 2 uses ``--exact_decode --normalize_in_workers`` (full decode, float clips normalised in
the workers, as the original). Same seed, same data; prints both validation accuracies and losses,
which should agree up to the noise of a few resampled pixels. Uses benchmarks/synthetic.py ('shapes').
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.synthetic import make_frame_dataset
from util_scripts.common import run_cli

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"fast": [], "reference": ["--exact_decode", "--normalize_in_workers"]}


def _train(ds, out: Path, extra: list[str], args) -> dict:
    argv = [
        "--video_path",
        str(ds.video_path),
        "--annotation_path",
        str(ds.annotation_path),
        "--result_path",
        str(out),
        "--n_classes",
        str(len(ds.class_names)),
        "--model",
        "resnet",
        "--model_depth",
        "10",
        "--resnet_widen_factor",
        "0.5",
        "--sample_size",
        "48",
        "--sample_duration",
        "8",
        "--batch_size",
        "8",
        "--n_threads",
        "2",
        "--no_cuda",
        "--learning_rate",
        str(args.learning_rate),
        "--n_epochs",
        str(args.n_epochs),
        "--checkpoint",
        str(args.n_epochs),
        "--manual_seed",
        str(args.seed),
        "--n_val_samples",
        "3",
        *extra,
    ]
    proc = subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    with open(out / "val.log") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {
        "val_acc": float(rows[-1]["acc"]),
        "val_loss": float(rows[-1]["loss"]),
        "val_acc_per_epoch": [round(float(r["acc"]), 4) for r in rows],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m util_scripts.bench_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", type=Path, default=Path(tempfile.mkdtemp(prefix="bench_accuracy_")))
    p.add_argument("--n_epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--learning_rate", type=float, default=0.01)
    args = p.parse_args(argv)
    ds = make_frame_dataset(
        args.work_dir / "data", n_classes=4, videos_per_class=6, n_frames=24, size=(128, 96), content="shapes"
    )
    results = {name: _train(ds, args.work_dir / name, extra, args) for name, extra in VARIANTS.items()}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
