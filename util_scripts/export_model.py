"""Export a trained model to TorchScript and/or ONNX, with a parity check against eager PyTorch.

Usage: ``python -m util_scripts.export_model CHECKPOINT [--output_dir DIR] [--formats torchscript onnx]``

The architecture comes from the checkpoint when it stores ``arch`` and ``model_kwargs`` (our own
checkpoints); for files in the original's format give the model flags (``--model``,
``--model_depth``, ``--resnet_shortcut`` ...). The class count is read from the file's classifier.
The example clip has the checkpoint's clip size and frame count (its clip spec, see ``datasets.clip_spec``;
the original's 16 frames of 112 x 112 for files without one) unless ``--sample_duration``/``--sample_size``
say otherwise.
Each exported file is reloaded and run on a fresh random clip; the maximum absolute difference to
the eager model is printed and the command fails when it exceeds ``--atol``.

ONNX files carry the checkpoint's clip spec, class names and options in their metadata, so ``main.py --predict``,
``--inference`` and ``--no_train`` validation run them (with ONNX Runtime) given as ``--resume_path``.
``--optimize`` also writes NAME_optimized.onnx, the graph ONNX Runtime optimises at its portable 'extended' level;
``--quantize int8`` writes NAME_int8.onnx, statically quantised (int8 weights per channel, uint8 activations, QDQ)
with activation ranges calibrated on ``--calibration_clips`` clips of ``--calibration_subset`` of the checkpoint's
dataset (its stored --video_path/--annotation_path unless given), then compares its top-1 with the fp32 model's
on ``--accuracy_clips`` clips of the validation subset. The numbers are printed and saved in NAME_export.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from checkpoint import Checkpoint, load_checkpoint
from datasets.clip_spec import ClipSpec
from engine.onnx_export import (
    CALIBRATION_SUBSETS,
    dataset_clips,
    export_int8,
    export_onnx,
    optimize,
    top1_agreement,
    write_metadata,
)
from engine.onnx_model import OnnxModel, export_metadata, ort_session
from errors import UserError
from models.factory import MODEL_FLAGS, model_from_checkpoint
from opts import add_architecture_args
from util_scripts.common import run_cli

logger = logging.getLogger(__name__)
FORMATS = ("torchscript", "onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint or pretrained file (.pth)")
    parser.add_argument("--output_dir", type=Path, default=None, help="where to write (default: next to checkpoint)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="what to export")
    parser.add_argument("--sample_duration", type=int, default=None,
                        help="frames of the example clip (default: the checkpoint's clip spec)")
    parser.add_argument("--sample_size", type=int, default=None,
                        help="height and width of the example clip (default: the checkpoint's clip spec)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--eval_weights", default="ema", choices=("ema", "raw"),
                        help="a checkpoint trained with --ema_decay: export its EMA average (ema) or raw weights")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |exported - eager| difference")
    d = parser.add_argument_group("deployment (ONNX Runtime; need --format onnx)")
    d.add_argument("--optimize", action="store_true",
                   help="also write NAME_optimized.onnx: the graph optimised by ONNX Runtime ('extended' level, "
                        "portable across CPUs)")
    d.add_argument("--quantize", choices=("int8",), default=None,
                   help="also write NAME_int8.onnx: static int8 quantisation calibrated on clips of the dataset")
    d.add_argument("--calibration_clips", type=int, default=64, help="clips that calibrate the int8 ranges (>= 1)")
    d.add_argument("--calibration_subset", choices=tuple(CALIBRATION_SUBSETS), default="training",
                   help="annotation subset the calibration clips come from")
    d.add_argument("--accuracy_clips", type=int, default=256,
                   help="validation clips on which the int8 top-1 is compared with fp32 (>= 1)")
    d.add_argument("--video_path", type=Path, default=None,
                   help="the dataset's videos (default: the checkpoint's stored --video_path)")
    d.add_argument("--annotation_path", type=Path, default=None,
                   help="the dataset's annotation file (default: the checkpoint's stored --annotation_path)")
    g = parser.add_argument_group("model (only for files without arch/model_kwargs, e.g. the original's)")
    add_architecture_args(g, from_file=True)
    g.add_argument("--n_classes", type=int, default=None, help="classes (default: read from the file)")
    g.add_argument("--n_input_channels", type=int, default=3, help="3 for rgb, 2 for flow")
    return parser


def load_model(args: argparse.Namespace, payload: dict | None = None) -> tuple[nn.Module, str, dict]:
    """Rebuild the checkpoint's model (from its own description, else from the flags) and load its weights;
    `payload`: the loaded checkpoint (read from args.checkpoint when None)."""
    flags = {name: getattr(args, name) for name in MODEL_FLAGS if getattr(args, name, None) is not None}
    payload = load_checkpoint(args.checkpoint) if payload is None else payload
    loaded = model_from_checkpoint(payload, flags, source=f"checkpoint {args.checkpoint}", weights=args.eval_weights)
    return loaded.model, loaded.arch, loaded.model_kwargs


def example_shape(args: argparse.Namespace, spec: ClipSpec, model_kwargs: dict) -> tuple[int, int, int, int, int]:
    """(1, C, T, H, W) of the example clip: the clip spec's frames and size unless the flags give them, and the
    channels the model takes."""
    duration = spec.sample_duration if args.sample_duration is None else args.sample_duration
    size = spec.sample_size if args.sample_size is None else args.sample_size
    return 1, model_kwargs.get("n_input_channels", spec.n_channels), duration, size, size


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Trace ``model`` (the graphs are static, so tracing captures them fully) and save it."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, example)
        traced.save(str(path))
    return path


def parity_torchscript(path: Path, model: nn.Module, x: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return (loaded(x) - model(x)).abs().max().item()


def parity_onnx(path: Path, model: nn.Module, x: torch.Tensor) -> float:
    try:
        import onnxruntime  # optional dependency: the parity check is skipped without it
    except ImportError as e:
        raise UserError(f"cannot check the ONNX file: onnxruntime is not installed ({e})") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"clips": x.numpy()})
    with torch.no_grad():
        return (torch.from_numpy(out) - model(x)).abs().max().item()


def check_deploy_flags(args: argparse.Namespace) -> None:
    """--optimize and --quantize make ONNX files; the clip counts are positive."""
    for flag in ("optimize", "quantize"):
        if getattr(args, flag) and "onnx" not in args.formats:
            raise UserError(f"--{flag} makes an ONNX Runtime file: add --format onnx")
    for flag in ("calibration_clips", "accuracy_clips"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")


class ExportResults(dict):
    """{format: (path, max abs diff to the eager model)}; ``int8``: with --quantize, its calibration and the
    accuracy comparison with fp32 (engine.onnx_export.top1_agreement)."""

    int8: dict | None = None


def export_all(args: argparse.Namespace) -> ExportResults:
    """Export every requested format."""
    check_deploy_flags(args)
    payload = load_checkpoint(args.checkpoint)
    model, arch, kwargs = load_model(args, payload)
    shape = example_shape(args, payload.clip, kwargs)
    example = torch.randn(shape)
    # A different clip and batch size for the check, so a graph frozen to the example would show.
    check = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(1))
    out_dir = args.output_dir or args.checkpoint.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.checkpoint.stem
    results = ExportResults()
    if "torchscript" in args.formats:
        path = export_torchscript(model, example, out_dir / f"{stem}.pt")
        results["torchscript"] = (path, parity_torchscript(path, model, check))
    if "onnx" in args.formats:
        export_onnx_files(results, args, payload, model, example, check, out_dir / f"{stem}.onnx")
    logger.info("exported %s with %s on example clips of %s", arch, kwargs, "x".join(map(str, shape[1:])))
    return results


def export_onnx_files(results: ExportResults, args: argparse.Namespace, payload: Checkpoint, model: nn.Module,
                      example: torch.Tensor, check: torch.Tensor, path: Path) -> None:
    """Add the fp32 .onnx, and with --optimize/--quantize its optimised and int8 copies (all with the metadata),
    to ``results``."""
    source = f"checkpoint {args.checkpoint}"
    data = dict(video_path=args.video_path, annotation_path=args.annotation_path, source=source)
    # first, so a dataset that is not there stops the export before anything is written
    calibration = (dataset_clips(payload, subset=args.calibration_subset, n_clips=args.calibration_clips, **data)
                   if args.quantize else [])
    metadata = export_metadata(payload, source=args.checkpoint, eval_weights=args.eval_weights, precision="fp32",
                               opset=args.opset)
    write_metadata(export_onnx(model, example, path, opset=args.opset), metadata)
    results["onnx"] = (path, parity_onnx(path, model, check))
    if args.optimize:
        optimized = optimize(path, path.with_name(f"{path.stem}_optimized.onnx"), metadata)
        results["onnx_optimized"] = (optimized, parity_onnx(optimized, model, check))
    if args.quantize:
        int8_metadata = export_metadata(payload, source=args.checkpoint, eval_weights=args.eval_weights,
                                        precision="int8", opset=args.opset,
                                        calibration={"subset": args.calibration_subset, "clips": len(calibration)})
        int8 = export_int8(model, example, path.with_name(f"{path.stem}_int8.onnx"),
                           [clip.numpy() for clip, _ in calibration], int8_metadata, opset=args.opset)
        results["onnx_int8"] = (int8, parity_onnx(int8, model, check))
        clips = dataset_clips(payload, subset="validation", n_clips=args.accuracy_clips, **data)
        results.int8 = {"calibration": {"subset": args.calibration_subset, "clips": len(calibration)},
                        "accuracy": top1_agreement(model, OnnxModel(ort_session(int8), source=int8), clips)}


def write_report(args: argparse.Namespace, results: ExportResults) -> Path:
    """NAME_export.json beside the exported files: each file's parity and the int8 accuracy comparison."""
    first = next(iter(results.values()))[0]
    report = {"checkpoint": str(args.checkpoint), "atol": args.atol,
              "files": {fmt: {"path": str(path), "max_abs_diff": diff} for fmt, (path, diff) in results.items()}}
    if results.int8 is not None:
        report["int8"] = results.int8
    path = first.with_name(f"{args.checkpoint.stem}_export.json")
    path.write_text(json.dumps(report, indent=2))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = export_all(args)
    failed = False
    for fmt, (path, diff) in results.items():
        if fmt == "onnx_int8":  # quantised: judged by its accuracy below, not by the fp32 tolerance
            print(f"{fmt}: {path}  max abs diff {diff:.3g} (quantised)")
            continue
        ok = diff <= args.atol
        failed |= not ok
        print(f"{fmt}: {path}  max abs diff {diff:.3g} ({'ok' if ok else f'FAILED, above {args.atol:g}'})")
    if results.int8 is not None:
        acc = results.int8["accuracy"]
        top1 = (f"top-1 fp32 {100 * acc['top1_reference']:.1f}% -> int8 {100 * acc['top1_candidate']:.1f}% "
                f"({acc['top1_change_points']:+.1f} points), " if acc["labelled_clips"] else "")
        print(f"int8 on {acc['clips']} validation clips: {top1}same top-1 on {100 * acc['top1_agreement']:.1f}%")
    print(f"report: {write_report(args, results)}")
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
