"""Video-level top-k accuracy (or multi-label mAP) of an inference result JSON against the annotation JSON.

Usage: ``python -m util_scripts.eval_accuracy GT_JSON RESULT_JSON [--subset validation] [-k 1]
[--ignore] [--save] [--per_class] [--confusion_matrix OUT_PREFIX] [--metric accuracy|map]``

``--metric map`` (multi-label, e.g. Charades): a video's true classes are all its
``annotations.actions`` (else its ``label``; none: a negative for every class), its scores the result's
per-class scores (a class it does not list scores 0, so write all classes: ``--output_topk 0``); prints
the mean over classes of the average precision and each class's AP. Classes without a positive video
have no AP and are left out of the mean. --save writes ``map.txt``.

Prints the original's lines ("load ground truth", ..., "top-k accuracy: <acc>"), then the mean
class accuracy. Ground-truth videos missing from the results count as wrong unless --ignore; a subset none of
whose videos has a result is an error (its score would measure nothing but the missing results).
``--subset`` accepts the CLI spellings too (val/train/test). --save writes the accuracy to
``<RESULT_JSON's folder>/top<k>.txt``; --confusion_matrix writes ``OUT_PREFIX.csv`` (and
``OUT_PREFIX.png`` when matplotlib is installed) of top-1 predictions.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from datasets.layout import subset_name
from errors import UserError
from util_scripts.common import run_cli
from utils import mean_average_precision, write_confusion_matrix

METRICS = ("accuracy", "map")


def _load_json(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path}: expected a JSON object at the top level")
    return data


def _load_annotation(path: Path) -> tuple[list[str], dict]:
    """(labels, database) of an annotation JSON."""
    data = _load_json(path, "ground-truth JSON")
    labels, database = data.get("labels"), data.get("database")
    if not isinstance(labels, list) or not isinstance(database, dict):
        raise UserError(f"{path}: expected 'labels' and 'database' (an annotation JSON made by util_scripts)")
    return labels, database


def load_ground_truth(path: Path, subset: str) -> tuple[list[str], dict[str, int]]:
    """(class names, {video_id: class index}) of the labelled videos of ``subset``."""
    labels, database = _load_annotation(path)
    index = {name: i for i, name in enumerate(labels)}
    gt = {}
    for video_id, entry in database.items():
        label = entry.get("annotations", {}).get("label")
        if entry.get("subset") != subset or label is None:
            continue
        if label not in index:
            raise UserError(f"{path}: video {video_id} has label '{label}', which is not in 'labels'")
        gt[video_id] = index[label]
    if not gt:
        present = sorted({str(e.get("subset")) for e in database.values()})
        raise UserError(f"{path}: no labelled videos in subset '{subset}' (subsets present: {', '.join(present)})")
    return labels, gt


def _averaged_results(path: Path) -> dict[str, list]:
    """The 'results' object of an inference JSON whose scores are averaged per video (one list per video)."""
    results = _load_json(path, "result JSON").get("results")
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected a 'results' object (the JSON written by inference)")
    for entries in results.values():
        if entries and isinstance(entries, list) and "result" in entries[0]:
            raise UserError(f"{path}: results are per clip (--inference_no_average); evaluate averaged results")
    return results


def load_results(path: Path, labels: list[str], k: int) -> dict[str, list[int]]:
    """{video_id: top-k class indices, best first} from an averaged inference JSON."""
    index = {name: i for i, name in enumerate(labels)}
    top = {}
    for video_id, entries in _averaged_results(path).items():
        try:
            ranked = sorted(entries, key=lambda e: e["score"], reverse=True)[:k]
            top[video_id] = [index[e["label"]] for e in ranked]
        except (KeyError, TypeError) as e:
            raise UserError(f"{path}: video {video_id}: bad entry or unknown label ({e})") from None
    return top


def _require_results(present: list[str], gt: dict, *, n_results: int, result_path: Path, subset: str) -> None:
    """UserError when no video of the subset has a result: the score would only measure the missing results
    (top-1 0.0, or the mAP of all-zero scores), e.g. after evaluating another subset than inference ran on."""
    if not present:
        raise UserError(f"{result_path} has no result for any of the {len(gt)} '{subset}' videos (its {n_results} "
                        "results are of other videos); evaluate the subset its inference ran on (--subset) or run "
                        "inference on this one (--inference_subset)")


def evaluate(gt_path: Path, result_path: Path, *, subset: str = "validation", k: int = 1, ignore: bool = False) -> dict:
    """Top-k accuracy, per-class accuracy, mean class accuracy and the top-1 confusion matrix.

    Returns a dict: accuracy, n_ground_truth, n_result (videos of the subset found in the
    results), n_evaluated (the denominator), per_class_accuracy ({name: acc or None when the
    class has no evaluated video}), mean_class_accuracy (over classes with videos), labels and
    confusion (rows: true class, columns: top-1 predicted class; only videos with results).
    """
    if k < 1:
        raise UserError(f"-k must be at least 1, got {k}")
    subset = subset_name(subset)
    labels, gt = load_ground_truth(gt_path, subset)
    top = load_results(result_path, labels, k)
    present = [v for v in gt if v in top]
    _require_results(present, gt, n_results=len(top), result_path=result_path, subset=subset)
    evaluated = present if ignore else list(gt)
    hits = {v: v in top and gt[v] in top[v] for v in evaluated}
    n_classes = len(labels)
    totals, correct = [0] * n_classes, [0] * n_classes
    for video_id, hit in hits.items():
        totals[gt[video_id]] += 1
        correct[gt[video_id]] += hit
    per_class = {labels[c]: (correct[c] / totals[c] if totals[c] else None) for c in range(n_classes)}
    class_accs = [acc for acc in per_class.values() if acc is not None]
    confusion = [[0] * n_classes for _ in range(n_classes)]
    for video_id in present:
        confusion[gt[video_id]][top[video_id][0]] += 1
    return {
        "accuracy": sum(hits.values()) / len(evaluated) if evaluated else 0.0,
        "n_ground_truth": len(gt),
        "n_result": len(present),
        "n_evaluated": len(evaluated),
        "per_class_accuracy": per_class,
        "mean_class_accuracy": sum(class_accs) / len(class_accs) if class_accs else 0.0,
        "labels": labels,
        "confusion": confusion,
    }


def load_multi_label_ground_truth(path: Path, subset: str) -> tuple[list[str], dict[str, set[int]]]:
    """(class names, {video_id: its classes}) of every video of ``subset``: its actions' classes, else its label."""
    labels, database = _load_annotation(path)
    index = {name: i for i, name in enumerate(labels)}
    gt = {}
    for video_id, entry in database.items():
        if entry.get("subset") != subset:
            continue
        ann = entry.get("annotations", {})
        names = [a.get("label") for a in ann.get("actions") or []] or ([ann["label"]] if "label" in ann else [])
        unknown = next((n for n in names if n not in index), None)
        if unknown is not None:
            raise UserError(f"{path}: video {video_id} has label {unknown!r}, which is not in 'labels'")
        gt[video_id] = {index[n] for n in names}
    if not gt:
        present = sorted({str(e.get("subset")) for e in database.values()})
        raise UserError(f"{path}: no videos in subset '{subset}' (subsets present: {', '.join(present)})")
    return labels, gt


def load_scores(path: Path, labels: list[str]) -> dict[str, list[float]]:
    """{video_id: score per class} from an averaged inference JSON; classes a video does not list score 0."""
    index = {name: i for i, name in enumerate(labels)}
    out = {}
    for video_id, entries in _averaged_results(path).items():
        row = [0.0] * len(labels)
        try:
            for e in entries:
                row[index[e["label"]]] = float(e["score"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: video {video_id}: bad entry or unknown label ({e})") from None
        out[video_id] = row
    return out


def evaluate_map(gt_path: Path, result_path: Path, *, subset: str = "validation", ignore: bool = False) -> dict:
    """Multi-label mAP of video scores. Returns a dict: map (over the classes with a positive video),
    per_class_ap ({name: AP or None without positives}), n_ground_truth, n_result, n_evaluated. Ground-truth
    videos without results score 0 for every class unless ``ignore``."""
    subset = subset_name(subset)
    labels, gt = load_multi_label_ground_truth(gt_path, subset)
    scores = load_scores(result_path, labels)
    present = [v for v in gt if v in scores]
    _require_results(present, gt, n_results=len(scores), result_path=result_path, subset=subset)
    evaluated = present if ignore else list(gt)
    targets = [[int(c in gt[v]) for c in range(len(labels))] for v in evaluated]
    rows = [scores.get(v, [0.0] * len(labels)) for v in evaluated]
    value, per_class = mean_average_precision(rows, targets)
    return {"map": value, "per_class_ap": dict(zip(labels, per_class)), "n_ground_truth": len(gt),
            "n_result": len(present), "n_evaluated": len(evaluated)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ground_truth_path", type=Path, help="annotation JSON")
    parser.add_argument("result_path", type=Path, help="inference output JSON (e.g. results/val.json)")
    parser.add_argument("-k", type=int, default=1, help="top-k")
    parser.add_argument("--subset", default="validation", help="validation|val, training|train, testing|test")
    parser.add_argument("--save", action="store_true", help="write the accuracy to top<k>.txt next to the results")
    parser.add_argument("--ignore", action="store_true", help="leave ground-truth videos without results out")
    parser.add_argument("--per_class", action="store_true", help="print the accuracy of every class")
    parser.add_argument("--confusion_matrix", type=Path, metavar="OUT_PREFIX", help="write OUT_PREFIX.csv/.png")
    parser.add_argument("--metric", default="accuracy", choices=METRICS,
                        help="accuracy: top-k of single-label videos; map: multi-label mean average precision")
    return parser


def main_map(args: argparse.Namespace) -> int:
    report = evaluate_map(args.ground_truth_path, args.result_path, subset=args.subset, ignore=args.ignore)
    print(f"number of ground truth: {report['n_ground_truth']}")
    print(f"number of result: {report['n_result']}")
    n_known = sum(ap is not None for ap in report["per_class_ap"].values())
    print(f"mAP: {report['map']} (over {n_known} of {len(report['per_class_ap'])} classes; classes without a "
          "positive video are left out)")
    for name, ap in report["per_class_ap"].items():
        print(f"  AP {name}: {'n/a (no positive video)' if ap is None else f'{ap:.4f}'}")
    if args.save:
        (args.result_path.parent / "map.txt").write_text(str(report["map"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.metric == "map":
        return main_map(args)
    print("load ground truth")
    report = evaluate(args.ground_truth_path, args.result_path, subset=args.subset, k=args.k, ignore=args.ignore)
    print(f"number of ground truth: {report['n_ground_truth']}")
    print("load result")
    print(f"number of result: {report['n_result']}")
    print(f"calculate top-{args.k} accuracy")
    print(f"top-{args.k} accuracy: {report['accuracy']}")
    print(f"mean class top-{args.k} accuracy: {report['mean_class_accuracy']}")
    if args.per_class:
        for name, acc in report["per_class_accuracy"].items():
            print(f"  {name}: {'n/a' if acc is None else f'{acc:.4f}'}")
    if args.save:
        (args.result_path.parent / f"top{args.k}.txt").write_text(str(report["accuracy"]))
    if args.confusion_matrix:
        for path in write_confusion_matrix(args.confusion_matrix, report["labels"], report["confusion"]):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
