"""ONNX files for deployment: the plain export, metadata, a graph optimised by ONNX Runtime, int8 quantisation.

- `write_metadata` stores the checkpoint's description (engine.onnx_model.export_metadata) in a file's
  metadata_props, so main.py can run the file like the checkpoint.
- `optimize` saves the graph ONNX Runtime makes at the 'extended' level (constant folding, Conv+BN and
  Conv+activation fusions, ...). Not 'all': that level adds layout transforms for the CPU it runs on (NCHWc
  blocks sized for its vector width), so the saved file would be tied to the machine that wrote it. Every session
  still applies 'all' when it loads a file, so the saved graph mostly saves start-up time.
- `quantize_int8` is static quantisation (onnxruntime.quantization.quantize_static): int8 weights per output
  channel, uint8 activations with ranges calibrated (min/max) on real clips, QDQ format (ORT fuses each
  DequantizeLinear -> Conv -> QuantizeLinear into its int8 QLinearConv kernel, which covers 3D convolutions).
- `export_int8` exports and quantises the model with its RGB stem as a 2D convolution over time-stacked frames
  (engine.time_unfold): ORT's int8 kernel is slow on 3D convolutions of 3-channel input and fast on the rest.
- `dataset_clips` reads those clips through the project's own dataset pipeline with the checkpoint's clip spec.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from checkpoint import Checkpoint
from datasets.factory import build_dataset
from engine.forward import prepare_batch
from engine.onnx_model import ort_session
from engine.time_unfold import unfold_input_convs
from errors import UserError
from opts import build_parser as main_parser

log = logging.getLogger(__name__)

CALIBRATION_SUBSETS = {"training": "train", "validation": "val"}


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int = 17) -> Path:
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


def write_metadata(path: Path, metadata: dict[str, str]) -> Path:
    """Set ``metadata`` as the file's metadata_props (replacing keys of the same name)."""
    import onnx  # optional dependency: only ONNX export needs it

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def optimize(source: Path, target: Path, metadata: dict[str, str]) -> Path:
    """Save ONNX Runtime's 'extended' optimisation of ``source`` as ``target`` (see the module docstring)."""
    ort_session(source, optimization="extended", optimized_path=target)
    return write_metadata(target, metadata)


def quantize_int8(source: Path, target: Path, calibration: Sequence[np.ndarray], metadata: dict[str, str]) -> Path:
    """Static int8 quantisation of fp32 ``source`` calibrated on ``calibration`` (model inputs, (1, C, T, H, W))."""
    # optional dependency: only --quantize needs onnxruntime's quantisation tools
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Clips(CalibrationDataReader):
        def __init__(self):
            self.clips = iter(calibration)

        def get_next(self):
            clip = next(self.clips, None)
            return None if clip is None else {"clips": clip}

    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and graph clean-up first (ORT's recommended pre-processing), so every Conv, its folded
        # BatchNorm and its ReLU are one node with known shapes when the quantiser annotates them.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(target), Clips(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return write_metadata(target, metadata)


def export_int8(model: nn.Module, example: torch.Tensor, target: Path, calibration: Sequence[np.ndarray],
                metadata: dict[str, str], *, opset: int = 17) -> Path:
    """The int8 file of ``model``: its export with the input convolutions unfolded in time (engine.time_unfold),
    quantised by `quantize_int8`."""
    with tempfile.TemporaryDirectory() as tmp:
        source = export_onnx(unfold_input_convs(model), example, Path(tmp) / "unfolded.onnx", opset=opset)
        return quantize_int8(source, target, calibration, metadata)


def dataset_clips(payload: Checkpoint, *, subset: str, n_clips: int, video_path: Path | None = None,
                  annotation_path: Path | None = None, source: str) -> list[tuple[torch.Tensor, int]]:
    """Up to ``n_clips`` normalised model inputs (1, C, T, H, W) with their labels (-1 unlabelled) from ``subset``
    ('training' or 'validation') of the checkpoint's dataset (its stored --video_path/--annotation_path unless
    given): the clip spec's clips, centre crops, evenly spread over the videos (the same clips on every run)."""
    opt = _data_options(payload, video_path=video_path, annotation_path=annotation_path, source=source)
    opt.inference_subset = CALIBRATION_SUBSETS[subset]
    probe = build_dataset(opt, "inference")
    if not len(probe):
        raise UserError(f"the {subset} subset of {opt.annotation_path} has no videos")
    opt.inference_n_clips = math.ceil(n_clips / len(probe))  # evenly spaced clips in each video
    dataset = build_dataset(opt, "inference")
    n_videos = math.ceil(n_clips / opt.inference_n_clips)
    normalizer = payload.clip.normalizer()
    clips = []
    for index in np.unique(np.linspace(0, len(dataset) - 1, n_videos).round().astype(int)):
        video_clips, _ = dataset[int(index)]
        label = dataset.records[index].label
        for clip in video_clips:
            batch, _ = prepare_batch(clip[None], None, torch.device("cpu"), normalizer)
            clips.append((batch, label if isinstance(label, int) else -1))
    return clips[:n_clips]


def _data_options(payload: Checkpoint, *, video_path: Path | None, annotation_path: Path | None, source: str):
    """main.py's options for reading the checkpoint's dataset: its stored options (main.py's defaults for those
    it lacks), the given paths, the clip spec, one centre crop per clip, loading in this process."""
    opt = main_parser().parse_args([])
    for name, value in payload.options.items():
        if hasattr(opt, name):
            setattr(opt, name, value)
    opt.video_path = video_path if video_path is not None else opt.video_path
    opt.annotation_path = annotation_path if annotation_path is not None else opt.annotation_path
    for flag in ("video_path", "annotation_path"):
        if getattr(opt, flag) is None:
            raise UserError(f"the calibration clips come from the dataset, but {source} stores no --{flag}: "
                            f"give --{flag}")
        setattr(opt, flag, Path(getattr(opt, flag)))
    if not opt.video_path.is_dir() or not opt.annotation_path.is_file():
        raise UserError(f"the dataset is not there: --video_path {opt.video_path} must be a folder and "
                        f"--annotation_path {opt.annotation_path} a file (give both where the data is now)")
    opt.explicit_flags = set()
    payload.clip.apply_to(opt, source=source)
    opt.inference_n_crops, opt.inference_crop, opt.normalize_in_workers, opt.n_threads = 1, "center", False, 1
    return opt


def top1_agreement(reference: Callable[[torch.Tensor], torch.Tensor], candidate: Callable[[torch.Tensor], torch.Tensor],
                   clips: Sequence[tuple[torch.Tensor, int]]) -> dict:
    """Top-1 accuracy of both models on the labelled ``clips``, how often their top-1 agree, and the largest
    logit difference."""
    agree = correct_ref = correct_cand = labelled = 0
    max_diff = 0.0
    with torch.inference_mode():
        for clip, label in _batches(clips):
            ref, cand = reference(clip).float(), candidate(clip).float()
            max_diff = max(max_diff, (ref - cand).abs().max().item())
            ref_top, cand_top = ref.argmax(1), cand.argmax(1)
            agree += (ref_top == cand_top).sum().item()
            known = label >= 0
            labelled += known.sum().item()
            correct_ref += (ref_top == label)[known].sum().item()
            correct_cand += (cand_top == label)[known].sum().item()
    n = len(clips)
    return {"clips": n, "labelled_clips": labelled, "top1_agreement": agree / n,
            "top1_reference": correct_ref / labelled if labelled else None,
            "top1_candidate": correct_cand / labelled if labelled else None,
            "top1_change_points": 100 * (correct_cand - correct_ref) / labelled if labelled else None,
            "max_abs_logit_diff": max_diff}


def _batches(clips: Sequence[tuple[torch.Tensor, int]], size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(clips), size):
        chunk = clips[start:start + size]
        yield torch.cat([c for c, _ in chunk]), torch.tensor([label for _, label in chunk])
