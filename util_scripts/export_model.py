"""Export a trained model to TorchScript and/or ONNX, with a parity check against eager PyTorch.

Usage: ``python -m util_scripts.export_model CHECKPOINT [--output_dir DIR] [--formats torchscript onnx]``

The architecture comes from the checkpoint when it stores ``arch`` and ``model_kwargs`` (our own
checkpoints); for files in the original's format give the model flags (``--model``,
``--model_depth``, ``--resnet_shortcut`` ...). The class count is read from the file's classifier.
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

from checkpoint import load_checkpoint, strip_wrapper_prefixes
from errors import UserError
from model import build_model_from_checkpoint_info, load_state_dict_compat, model_kwargs_from_opts
from models import MODEL_FAMILIES
from util_scripts.common import run_cli

logger = logging.getLogger(__name__)
FORMATS = ("torchscript", "onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint or pretrained file (.pth)")
    parser.add_argument("--output_dir", type=Path, default=None, help="where to write (default: next to checkpoint)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="what to export")
    parser.add_argument("--sample_duration", type=int, default=16, help="frames of the example clip")
    parser.add_argument("--sample_size", type=int, default=112, help="height and width of the example clip")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |exported - eager| difference")
    g = parser.add_argument_group("model (only for files without arch/model_kwargs, e.g. the original's)")
    g.add_argument("--model", default=None, choices=sorted(MODEL_FAMILIES), help="model family")
    g.add_argument("--model_depth", type=int, default=None, help="depth")
    g.add_argument("--n_classes", type=int, default=None, help="classes (default: read from the file)")
    g.add_argument("--n_input_channels", type=int, default=3, help="3 for rgb, 2 for flow")
    g.add_argument("--conv1_t_size", type=int, default=7)
    g.add_argument("--conv1_t_stride", type=int, default=1)
    g.add_argument("--no_max_pool", action="store_true")
    g.add_argument("--resnet_shortcut", default="B", choices=("A", "B"))
    g.add_argument("--resnet_widen_factor", type=float, default=1.0)
    g.add_argument("--wide_resnet_k", type=int, default=2)
    g.add_argument("--resnext_cardinality", type=int, default=32)
    return parser


def load_model(args: argparse.Namespace) -> tuple[nn.Module, str, dict]:
    """Rebuild the checkpoint's model (from its own description, else from the flags) and load its weights."""
    checkpoint = load_checkpoint(args.checkpoint)
    state_dict = strip_wrapper_prefixes(checkpoint["state_dict"])
    stored_arch = checkpoint.get("arch") if isinstance(checkpoint.get("arch"), str) else None
    if stored_arch and isinstance(checkpoint.get("model_kwargs"), dict):
        arch, kwargs = stored_arch, dict(checkpoint["model_kwargs"])
    else:
        arch, kwargs = _arch_from_flags(args, stored_arch, state_dict)
    model = build_model_from_checkpoint_info(arch, kwargs)
    load_state_dict_compat(model, state_dict, source=f"checkpoint {args.checkpoint}", source_arch=stored_arch)
    return model.eval(), arch, kwargs


def _arch_from_flags(args: argparse.Namespace, stored_arch: str | None, state_dict: dict) -> tuple[str, dict]:
    if args.model is None or args.model_depth is None:
        if stored_arch is None:
            raise UserError(f"{args.checkpoint} does not say which model it holds: give --model and --model_depth")
        family, depth = stored_arch.rsplit("-", 1)
    else:
        family, depth = args.model, args.model_depth
    opt = argparse.Namespace(**vars(args))
    opt.model, opt.model_depth = family, int(depth)
    if opt.n_classes is None:
        head = state_dict.get("classifier.weight" if family == "densenet" else "fc.weight")
        if head is None:
            raise UserError(f"cannot read the class count from {args.checkpoint}: give --n_classes")
        opt.n_classes = head.shape[0]
    return f"{family}-{int(depth)}", model_kwargs_from_opts(opt)


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
        import onnxruntime
    except ImportError as e:
        raise UserError(f"cannot check the ONNX file: onnxruntime is not installed ({e})") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"clips": x.numpy()})
    with torch.no_grad():
        return (torch.from_numpy(out) - model(x)).abs().max().item()


def export_all(args: argparse.Namespace) -> dict[str, tuple[Path, float]]:
    """Export every requested format; return {format: (path, max abs diff)}."""
    model, arch, kwargs = load_model(args)
    shape = (1, kwargs.get("n_input_channels", 3), args.sample_duration, args.sample_size, args.sample_size)
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
    logger.info("exported %s with %s", arch, kwargs)
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
