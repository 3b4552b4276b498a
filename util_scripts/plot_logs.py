"""Plot the loss, accuracy and learning-rate curves of a training run from its train.log and val.log.

Usage: ``python -m util_scripts.plot_logs RESULT_DIR [--output_dir DIR]``

Reads the tab-separated logs that main.py writes into --result_path (header row, one row per epoch)
and writes loss.png, accuracy.png and lr.png (training and validation together where both exist).
A missing val.log (--no_val), logs of a resumed run and a torn last line of an interrupted run
are all fine: rows that do not parse are skipped and a repeated epoch keeps its last row.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from errors import UserError
from util_scripts.common import atomic_file, run_cli

LOGS = ("train.log", "val.log")
# (file name, y label, column, log scale): one figure per metric.
FIGURES = (("loss.png", "loss", "loss", False), ("accuracy.png", "accuracy", "acc", False),
           ("lr.png", "learning rate", "lr", True))


def read_log(path: Path) -> dict[str, list[float]]:
    """Columns of a TSV log by header name, one value per epoch in epoch order ({} when absent or empty)."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:  # newline='': CRLF and LF line ends alike
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        return {}
    header, by_epoch = rows[0], {}
    for row in rows[1:]:
        if len(row) != len(header):
            continue  # torn last line of an interrupted run
        try:
            values = [float(v) for v in row]
        except ValueError:
            continue
        if math.isfinite(values[0]):
            by_epoch[int(values[0])] = values  # a repeated epoch (resumed run) keeps its last row
    epochs = sorted(by_epoch)
    return {name: [by_epoch[e][i] for e in epochs] for i, name in enumerate(header)}


def plot_curves(logs: dict[str, dict[str, list[float]]], output_dir: Path) -> list[Path]:
    """One PNG per metric that some log has; returns the written paths."""
    import matplotlib  # optional dependency, imported only when a plot is drawn

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    written = []
    for file_name, label, column, log_scale in FIGURES:
        series = {split: log for split, log in logs.items() if log.get(column) and log.get("epoch")}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for split, log in series.items():
            ax.plot(log["epoch"], log[column], marker="o" if len(log["epoch"]) < 30 else None, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if log_scale and all(v > 0 for log in series.values() for v in log[column]):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = output_dir / file_name
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m util_scripts.plot_logs", description=__doc__.splitlines()[0])
    parser.add_argument("result_dir", type=Path, help="the --result_path of a run (holds train.log / val.log)")
    parser.add_argument("--output_dir", type=Path, default=None, help="where to write the PNGs (default: result_dir)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.result_dir.is_dir():
        raise UserError(f"{args.result_dir} is not a directory")
    logs = {name.removesuffix(".log"): read_log(args.result_dir / name) for name in LOGS}
    logs = {split: log for split, log in logs.items() if log.get("epoch")}
    if not logs:
        raise UserError(f"no epochs logged in {args.result_dir} (no train.log or val.log with rows)")
    for path in plot_curves(logs, args.output_dir or args.result_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
