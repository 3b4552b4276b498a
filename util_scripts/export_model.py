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
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from checkpoint import load_checkpoint
from datasets.clip_spec import ClipSpec
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


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int) -> Path:
    """Write an ONNX graph with a dynamic batch dimension (input 'clips', output 'logits')."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter needs no onnxscript and handles these conv nets fully.
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["clips"],
                output_names=["logits"],
                dynamic_axes={"clips": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
            )
    except (ImportError, ModuleNotFoundError) as e:
        raise UserError(f"ONNX export is unavailable in this environment: {e}") from None
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


def export_all(args: argparse.Namespace) -> dict[str, tuple[Path, float]]:
    """Export every requested format; return {format: (path, max abs diff)}."""
    payload = load_checkpoint(args.checkpoint)
    model, arch, kwargs = load_model(args, payload)
    shape = example_shape(args, payload.clip, kwargs)
    example = torch.randn(shape)
    # A different clip and batch size for the check, so a graph frozen to the example would show.
    check = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(1))
    out_dir = args.output_dir or args.checkpoint.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.checkpoint.stem
    results = {}
    if "torchscript" in args.formats:
        path = export_torchscript(model, example, out_dir / f"{stem}.pt")
        results["torchscript"] = (path, parity_torchscript(path, model, check))
    if "onnx" in args.formats:
        path = export_onnx(model, example, out_dir / f"{stem}.onnx", opset=args.opset)
        results["onnx"] = (path, parity_onnx(path, model, check))
    logger.info("exported %s with %s on example clips of %s", arch, kwargs, "x".join(map(str, shape[1:])))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = export_all(args)
    failed = False
    for fmt, (path, diff) in results.items():
        ok = diff <= args.atol
        failed |= not ok
        print(f"{fmt}: {path}  max abs diff {diff:.3g} ({'ok' if ok else f'FAILED, above {args.atol:g}'})")
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
