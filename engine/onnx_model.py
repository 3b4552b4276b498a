"""Exported ONNX models (``util_scripts.export_model``) run by ONNX Runtime in place of the PyTorch model.

An exported file carries, in its ONNX metadata (``metadata_props``, key METADATA_KEY), the description of the
checkpoint it came from: the clip spec, class names, stored options, arch and epoch (`export_metadata`). Reading
it back gives a `checkpoint.Checkpoint` without weights, so ``main.py --predict``, ``--inference`` and
``--no_train`` validation take the clip spec, the test views and the class names from an ``.onnx`` file exactly as
from the ``.pth`` it was exported from. `OnnxModel` looks like the model to the loops: ``model(clips)`` returns
the logits as a torch tensor on the clips' device.

ONNX Runtime uses torch's intra-op thread count (what the eager model would use), the CPU by default and its
CUDA provider when the run uses a GPU and the installed onnxruntime has it (onnxruntime-gpu).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from checkpoint import FIELDS, Checkpoint, Resume
from errors import UserError

log = logging.getLogger(__name__)

ONNX_SUFFIX = ".onnx"
METADATA_KEY = "action_recognition.checkpoint"
METADATA_FORMAT = 1
# What an exported file keeps of its checkpoint: everything that describes the model (and its clip spec), no weights.
DESCRIPTION_FIELDS = ("epoch", "arch", "model_kwargs", "class_names", "options")
# ORT's graph optimisation levels by name; 'extended' is the most a saved file should hold (see engine.onnx_export).
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def is_onnx_file(path) -> bool:
    """The file an --resume_path names is an exported ONNX model (by its suffix, as the user names it)."""
    return path is not None and Path(path).suffix.lower() == ONNX_SUFFIX


def export_metadata(payload: Checkpoint, *, source: Path, **export_info) -> dict[str, str]:
    """The metadata_props of a file exported from checkpoint ``payload``: its description (the clip spec
    resolved, so older checkpoints get the spec they imply) and how it was exported (``export_info``: weights,
    precision, ...), as one JSON string."""
    described = {**{k: payload.field(k) for k in DESCRIPTION_FIELDS if payload.field(k) is not None},
                 "clip_spec": payload.clip.to_dict(),
                 "export": {"format": METADATA_FORMAT, "checkpoint": str(source), **export_info}}
    return {METADATA_KEY: json.dumps(described, default=str)}


def ort_session(path: Path, *, cuda: bool = False, threads: int | None = None, optimization: str = "all",
                optimized_path: Path | None = None):
    """An ONNX Runtime session of ``path``: ``threads`` intra-op threads (default torch's count), the graph
    optimisations of ``optimization`` (one of OPTIMIZATION_LEVELS), the optimised graph saved to
    ``optimized_path`` when given; the CUDA provider first when ``cuda`` and installed."""
    import onnxruntime as ort  # optional dependency: only exported models need it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # Idle threads sleep instead of spinning: loader workers and --predict's decode thread share these cores (on the
    # 2-core development machine a resnet-18 int8 clip took 271 ms so against 351 ms spinning).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1  # these graphs are one chain of convolutions: nothing to run side by side
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{_level_name(optimization)}")
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ORT raises its own classes (InvalidProtobuf, NoSuchFile, Fail ...) for unusable files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"ONNX Runtime cannot load {path}: {first_line}") from None


def _level_name(optimization: str) -> str:
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, not {optimization!r}")
    return {"disable": "DISABLE_ALL", "all": "ENABLE_ALL"}.get(optimization, f"ENABLE_{optimization.upper()}")


@dataclass(frozen=True)
class ClassifierSize:
    """What ``get_classifier()`` tells the loops about the head (its output count); its weights are in the graph."""

    out_features: int


class OnnxModel(nn.Module):
    """An ONNX Runtime session behind the model interface the loops use: ``model(clips)`` -> logits (N, classes),
    a float32 torch tensor on the clips' device. It has no parameters, so ``.to()``/``.eval()`` change nothing."""

    def __init__(self, session, *, source: Path):
        super().__init__()
        self.session, self.source = session, source
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        n_classes = session.get_outputs()[0].shape[-1]
        if not isinstance(n_classes, int):
            raise UserError(f"{source}: the class count of output {self.output_name!r} is not fixed ({n_classes})")
        self.n_classes = n_classes

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.detach().float().cpu().contiguous().numpy()
        (logits,) = self.session.run([self.output_name], {self.input_name: x})
        return torch.from_numpy(logits).to(clips.device)

    def get_classifier(self) -> ClassifierSize:
        return ClassifierSize(self.n_classes)

    def describe(self) -> str:
        providers = ", ".join(self.session.get_providers())
        return f"{self.source} with ONNX Runtime ({providers})"


@dataclass(frozen=True)
class ExportedModel:
    """An exported file opened for evaluation: the runnable model and its checkpoint's description."""

    path: Path
    model: OnnxModel
    payload: Checkpoint

    @property
    def resume(self) -> Resume:
        """What main.py's evaluation reads of a --resume_path checkpoint (clip spec, options), without weights."""
        return Resume(self.path, self.payload)

    @property
    def export_info(self) -> dict:
        return dict(self.payload.get("export", {}))


def load_exported(path, *, cuda: bool = False, threads: int | None = None) -> ExportedModel:
    """Open an exported model; a file that is not one of ours (no METADATA_KEY) is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--resume_path {path}: no such file")
    session = ort_session(path, cuda=cuda, threads=threads)
    payload = Checkpoint(_read_description(session.get_modelmeta().custom_metadata_map, path))
    payload.clip  # noqa: B018 - a malformed stored clip spec is refused now, in one line, not mid-run
    exported = ExportedModel(path, OnnxModel(session, source=path), payload)
    info = exported.export_info
    log.info("exported model %s (%s %s, epoch %d of %s) run with ONNX Runtime on %s, %d threads", path,
             payload.arch or "model", info.get("precision", "fp32"), payload.epoch, info.get("checkpoint", "?"),
             ", ".join(session.get_providers()), session.get_session_options().intra_op_num_threads)
    return exported


def _read_description(metadata: dict, path: Path) -> dict:
    if METADATA_KEY not in metadata:
        raise UserError(f"{path} is an ONNX file without this toolkit's metadata (clip spec, class names): "
                        "export the checkpoint with python -m util_scripts.export_model")
    try:
        described = json.loads(metadata[METADATA_KEY])
    except ValueError as e:
        raise UserError(f"{path}: the stored checkpoint description is not JSON ({e})") from None
    if not isinstance(described, dict):
        raise UserError(f"{path}: the stored checkpoint description is not a dict")
    return {k: v for k, v in described.items() if k in FIELDS or k == "export"}


def exported_for_run(opt, device: torch.device) -> ExportedModel:
    """main.py's --resume_path FILE.onnx: only evaluation (validation with --no_train, --inference) can use it."""
    if not opt.no_train:
        raise UserError(f"--resume_path {opt.resume_path} is an exported ONNX model: it can be evaluated "
                        "(--no_train, with validation or --inference) but not trained; resume from the .pth")
    return exported_for_predict(opt, device)


def exported_for_predict(opt, device: torch.device) -> ExportedModel:
    """--predict's (and evaluation's) --resume_path FILE.onnx, on ``device``'s provider."""
    if getattr(opt, "save_features", False):
        raise UserError("--save_features needs the PyTorch checkpoint (.pth): an exported ONNX model gives "
                        "only the logits")
    return load_exported(opt.resume_path, cuda=device.type == "cuda")
