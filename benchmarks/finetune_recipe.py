"""Low-data fine-tuning on the demo task, with and without the fine-tuning recipe (an experiment, run once).

Usage: ``python -m benchmarks.finetune_recipe [--work_dir DIR] [--pretrain_epochs 10] [--finetune_epochs 12]
[--n_pretrain_per_class 100] [--n_finetune_per_class 6] [--seeds 1 2 3] [--variants plain recipe]
[--add_variant NAME "FLAGS"]``

1. Writes the demo dataset (util_scripts/make_demo_dataset.py) and extracts its frames.
2. Pretrains a 3D ResNet-10 on three of its classes (move_left, move_up, grow) with plain SGD (with fewer
   than ~100 videos per class it memorises the backgrounds instead of learning the motions).
3. Fine-tunes that checkpoint on the other three (move_right, move_down, rotate_cw) from only
   ``--n_finetune_per_class`` training videos each, from layer3 on, once per variant and seed (``--seeds``:
   the fine-tune's --manual_seed), all with the same schedule: ``plain`` (SGD, the flags' defaults),
   ``recipe`` (AdamW, label smoothing, mixup + cutmix, EMA), ``recipe+`` (the recipe with layer-wise LR decay
   and precise BatchNorm statistics), ``full`` (recipe+ with RandAugment and random erasing; repeated
   augmentation is left out: it serves multi-GPU batches); a variant is a list of flags in ``VARIANTS`` (or
   ``--add_variant``).
4. Prints, as JSON, per variant and seed the validation accuracy (clip level, EMA weights for the recipe) of
   every epoch and the video-level accuracy of the last epoch's inference, and per variant the mean, standard
   deviation (over seeds; 0 for one seed), minimum and maximum of the final clip- and video-level accuracies.

The dataset and the pretrained model are made once, with the first seed, so the seeds vary only the
fine-tuning (its data order, crops, mixing and initial head).

The settings were chosen before running and are not tuned to this task; expect noise of a few points
between seeds with ~30 validation videos.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_CLASSES = ("move_left", "move_up", "grow")
FINETUNE_CLASSES = ("move_right", "move_down", "rotate_cw")
CLIP = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.5", "--sample_size", "48",
        "--sample_duration", "16", "--train_crop", "center", "--no_hflip", "--batch_size", "8", "--n_threads", "2",
        "--no_cuda", "--n_val_samples", "3", "--lr_scheduler", "cosine", "--dataset", "ucf101", "--n_classes", "3"]
VARIANTS = {
    "plain": ["--optimizer", "sgd", "--learning_rate", "0.01", "--weight_decay", "1e-3"],
    "recipe": ["--optimizer", "adamw", "--learning_rate", "1e-3", "--weight_decay", "0.05", "--label_smoothing",
               "0.1", "--mixup_alpha", "0.8", "--cutmix_alpha", "1.0", "--ema_decay", "0.9"],
}
VARIANTS["recipe+"] = [*VARIANTS["recipe"], "--layer_decay", "0.75", "--precise_bn", "4"]
VARIANTS["full"] = [*VARIANTS["recipe+"], "--randaugment", "2", "9", "--random_erasing", "0.25"]


def _write_splits(folder: Path, lists: dict[str, list[str]], classes: tuple[str, ...], n_train: int) -> Path:
    """classInd/trainlist01/testlist01 for ``classes`` only, with the first ``n_train`` training videos of each."""
    folder.mkdir(parents=True, exist_ok=True)
    index = {name: k for k, name in enumerate(classes, start=1)}
    train = [row.split()[0] for row in lists["train"] if row.split("/")[0] in index]
    train = [path for name in classes for path in [p for p in train if p.startswith(f"{name}/")][:n_train]]
    test = [row for row in lists["test"] if row.split("/")[0] in index]
    (folder / "classInd.txt").write_text("".join(f"{k} {name}\n" for name, k in index.items()))
    (folder / "trainlist01.txt").write_text("".join(f"{p} {index[p.split('/')[0]]}\n" for p in train))
    (folder / "testlist01.txt").write_text("".join(f"{p}\n" for p in test))
    return folder


def _run(command: list[str]) -> None:
    """Run a step as a user would type it (``main.py ...`` or ``-m util_scripts.NAME ...``) from the repository."""
    proc = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])


def _main_py(argv: list[str]) -> None:
    _run(["main.py", *argv])


def _split_lists(splits: Path) -> dict[str, list[str]]:
    """The rows of the demo dataset's trainlist01/testlist01 files."""
    return {subset: (splits / f"{subset}list01.txt").read_text().split("\n")[:-1] for subset in ("train", "test")}


def _val_accs(result: Path) -> list[float]:
    with open(result / "val.log") as f:
        return [round(float(row["acc"]), 4) for row in csv.DictReader(f, delimiter="\t")]


def _video_accuracy(annotation: Path, result: Path) -> float:
    labels = {k: v["annotations"]["label"] for k, v in json.loads(annotation.read_text())["database"].items()
              if v["subset"] == "validation"}
    scores = json.loads((result / "val.json").read_text())["results"]
    hits = [scores[video][0]["label"] == label for video, label in labels.items()]
    return round(sum(hits) / len(hits), 4)


def spread(values: list[float]) -> dict:
    """Mean, standard deviation (sample, over the seeds; 0 for one), minimum and maximum of ``values``."""
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(runs: dict[int, dict]) -> dict:
    """A variant's report: every seed's run, and the spread of the final clip and video accuracies."""
    return {"runs": {str(seed): run for seed, run in runs.items()},
            "val_clip_acc": spread([run["val_clip_acc"] for run in runs.values()]),
            "val_video_acc": spread([run["val_video_acc"] for run in runs.values()])}


def chosen_variants(names: list[str] | None, added: list[list[str]] | None) -> dict[str, list[str]]:
    """VARIANTS (only ``names`` when given, in that order) plus ``added`` [name, "flags"] pairs."""
    variants = {**VARIANTS, **{name: flags.split() for name, flags in added or []}}
    unknown = [name for name in names or [] if name not in variants]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {', '.join(unknown)}; known: {', '.join(variants)}")
    return {name: variants[name] for name in names} if names else variants


def _finetune(work: Path, data: list[str], annotation: Path, pretrained: Path, flags: list[str], *, name: str,
              seed: int, epochs: int) -> dict:
    out = work / f"results_{name}_seed{seed}"
    _main_py([*data, "--manual_seed", str(seed), "--annotation_path", str(annotation), "--result_path", str(out),
              *CLIP, *flags, "--pretrain_path", str(pretrained), "--n_pretrain_classes", "3",
              "--ft_begin_module", "layer3", "--n_epochs", str(epochs), "--checkpoint", str(epochs), "--inference",
              "--inference_n_clips", "3"])
    accs = _val_accs(out)
    return {"val_clip_acc_per_epoch": accs, "val_clip_acc": accs[-1], "val_video_acc": _video_accuracy(annotation, out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.finetune_recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", type=Path, default=None)
    p.add_argument("--pretrain_epochs", type=int, default=10)
    p.add_argument("--finetune_epochs", type=int, default=12)
    p.add_argument("--n_pretrain_per_class", type=int, default=100)
    p.add_argument("--n_finetune_per_class", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[1],
                   help="fine-tune every variant once per seed (the first also makes the data and pretrained model)")
    p.add_argument("--variants", nargs="+", default=None, help="only these variants (default: all)")
    p.add_argument("--add_variant", nargs=2, action="append", metavar=("NAME", "FLAGS"),
                   help='one more variant: its name and its main.py flags in one string, e.g. sgd_lr "--learning_rate '
                        '0.003"')
    args = p.parse_args(argv)
    variants = chosen_variants(args.variants, args.add_variant)
    data_seed = args.seeds[0]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="finetune_recipe_"))
    _run(["-m", "util_scripts.make_demo_dataset", str(work), "--n_train_per_class", str(args.n_pretrain_per_class),
          "--n_test_per_class", "10", "--size", "96x72", "--n_frames", "24", "--seed", str(data_seed)])
    lists = _split_lists(work / "splits")
    _run(["-m", "util_scripts.generate_video_jpgs", str(work / "videos"), str(work / "jpg"), "ucf101", "--size", "48"])
    tasks = {"pretrain": (PRETRAIN_CLASSES, args.n_pretrain_per_class),
             "finetune": (FINETUNE_CLASSES, args.n_finetune_per_class)}
    for task, (classes, n_train) in tasks.items():
        _run(["-m", "util_scripts.ucf101_json", str(_write_splits(work / f"{task}_splits", lists, classes, n_train)),
              str(work / "jpg"), str(work / task)])
    data = ["--video_path", str(work / "jpg")]
    pre = work / "results_pretrain"
    _main_py([*data, "--manual_seed", str(data_seed), "--annotation_path", str(work / "pretrain" / "ucf101_01.json"),
              "--result_path", str(pre), *CLIP, "--n_epochs", str(args.pretrain_epochs),
              "--checkpoint", str(args.pretrain_epochs), "--learning_rate", "0.05", "--weight_decay", "1e-4"])
    report = {"pretrain_val_acc": _val_accs(pre)[-1], "settings": {**vars(args), "work_dir": str(work)}}
    annotation = work / "finetune" / "ucf101_01.json"
    pretrained = pre / f"save_{args.pretrain_epochs}.pth"
    for name, flags in variants.items():
        runs = {seed: _finetune(work, data, annotation, pretrained, flags, name=name, seed=seed,
                                epochs=args.finetune_epochs) for seed in args.seeds}
        report[name] = {"flags": " ".join(flags), **summarize(runs)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
