"""The clip spec: what one input of a model is (frame size, frames and how they are sampled, input type,
normalisation) and how its outputs are read (sigmoids for multi-label, softmax otherwise; class names).

Built once from the options (`ClipSpec.from_options`), saved in every checkpoint as a plain dict under
``"clip_spec"`` (`to_dict`), and read back (`checkpoint.Checkpoint.clip`) by ``--predict``, Grad-CAM, export and
``--no_train`` evaluation, so they cut and normalise clips the way the model was trained on them. A checkpoint
made before the spec existed gets the spec its stored options imply; one without options (the original's
format) the defaults of main.py, which are the original's. `apply_to` gives an option namespace the spec with
the flags typed on the command line on top.

What belongs here is what defines a clip or the reading of a model's outputs. The window spacing of dense
inference (``inference_stride``) is in too: it is chosen with the clip length (windows every ``--sample_duration``
frames tile a video; 8-frame clips with the default stride of 16 would skip every other 8 frames), and
``--predict`` has always taken it from the checkpoint. The view counts (``--inference_n_clips``,
``--inference_n_crops``) and the crop (``--inference_crop``) are not: they choose how many clips of the spec are
averaged and how much of the frame they show, the evaluator's choices (``datasets.views``; --predict takes the ones
the checkpoint's run was evaluated with from its stored options).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

from datasets.spatial_transforms import ClipNormalizer, SpatialTransform, get_mean_std, get_spatial_transform
from datasets.temporal_transforms import TEMPORAL_SAMPLINGS, TemporalTransform, get_temporal_transform
from errors import UserError

log = logging.getLogger(__name__)

INPUT_CHANNELS = {"rgb": 3, "flow": 2}
# The options that define a clip and main.py's defaults for them (the original's, where it had the option): what
# a checkpoint that stores no value for one was made with. tests/datasets/test_clip_spec.py keeps them equal to
# opts.py's defaults.
DEFAULT_OPTIONS = {"sample_size": 112, "sample_duration": 16, "sample_t_stride": 1, "temporal_sampling": "dense",
                   "inference_stride": 16, "input_type": "rgb", "mean_dataset": "kinetics", "value_scale": 1,
                   "no_mean_norm": False, "no_std_norm": False, "multi_label": False}
CLIP_OPTIONS = tuple(DEFAULT_OPTIONS)
# The options the normalisation's mean and std are resolved from.
NORMALISATION_OPTIONS = ("input_type", "mean_dataset", "value_scale", "no_mean_norm", "no_std_norm")
_CHOICES = {"temporal_sampling": TEMPORAL_SAMPLINGS, "input_type": tuple(INPUT_CHANNELS)}


def resolve_input(opt: argparse.Namespace) -> None:
    """Set ``opt.n_input_channels`` and opts.json's per-channel ``mean``/``std``: --mean_dataset's statistics
    scaled by --value_scale, before --no_mean_norm/--no_std_norm (as opts.json has always recorded them)."""
    mean, std = get_mean_std(opt.value_scale, opt.mean_dataset)
    opt.n_input_channels = INPUT_CHANNELS[opt.input_type]
    opt.mean, opt.std = mean[:opt.n_input_channels], std[:opt.n_input_channels]


def normalisation_stats(opt) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the inputs are normalised with (in the --value_scale range): --mean_dataset's,
    zero with --no_mean_norm, one with --no_std_norm; two channels for flow. Reads only NORMALISATION_OPTIONS."""
    try:
        mean, std = get_mean_std(opt.value_scale, opt.mean_dataset)
    except ValueError as e:
        raise UserError(str(e)) from None
    n_channels = INPUT_CHANNELS[opt.input_type]
    if opt.no_mean_norm:
        mean = [0.0] * n_channels
    if opt.no_std_norm:
        std = [1.0] * n_channels
    return tuple(float(m) for m in mean[:n_channels]), tuple(float(s) for s in std[:n_channels])


@dataclass(frozen=True)
class ClipSpec:
    """One model input and the reading of its outputs; frozen, so every tool sees the same one.

    The option-named fields are the options they come from (DEFAULT_OPTIONS). With ``temporal_sampling``
    'segment' a clip is ``sample_duration`` segments of the whole video, one frame each (``n_segments``), and
    ``sample_t_stride`` does not apply. ``mean``/``std`` are what the normaliser uses: resolved from the
    normalisation options when the spec is made, and read back as stored, so a checkpoint keeps the numbers
    it was trained with.
    """

    sample_size: int
    sample_duration: int
    sample_t_stride: int
    temporal_sampling: str
    inference_stride: int
    input_type: str
    mean_dataset: str
    value_scale: int
    no_mean_norm: bool
    no_std_norm: bool
    multi_label: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, opt, class_names: Sequence[str] = ()) -> ClipSpec:
        """The spec of resolved options (a parse_opts namespace, or anything with the CLIP_OPTIONS attributes)."""
        mean, std = normalisation_stats(opt)
        return cls(**{name: getattr(opt, name) for name in CLIP_OPTIONS}, mean=mean, std=std,
                   class_names=tuple(class_names))

    @classmethod
    def from_dict(cls, stored: Mapping) -> ClipSpec:
        """The spec of `to_dict`'s dict; options it lacks take DEFAULT_OPTIONS, a missing mean/std is resolved.
        A malformed dict (a damaged or foreign checkpoint) raises UserError."""
        if not isinstance(stored, Mapping):
            raise UserError(f"the clip spec is not a dict but {type(stored).__name__}")
        options = {**DEFAULT_OPTIONS, **{k: stored[k] for k in CLIP_OPTIONS if k in stored}}
        _check_options(options)
        spec = cls.from_options(argparse.Namespace(**options), _strings(stored.get("class_names", ()), "class_names"))
        if "mean" in stored and "std" in stored:
            spec = replace(spec, mean=_numbers(stored["mean"], "mean", spec.n_channels),
                           std=_numbers(stored["std"], "std", spec.n_channels))
        return spec

    @classmethod
    def from_stored(cls, stored: Mapping | None, options: Mapping, class_names: Sequence[str]) -> ClipSpec:
        """The spec a checkpoint stores (``stored``); for one made before the spec existed (None), the spec of
        its stored ``options`` (DEFAULT_OPTIONS for those it lacks, all of them for the original's format) and
        ``class_names``. checkpoint.Checkpoint.clip is the caller."""
        if stored is not None:
            return cls.from_dict(stored)
        # only the clip options: the stored mean/std are opts.json's, before --no_mean_norm/--no_std_norm
        derived = {k: options[k] for k in CLIP_OPTIONS if k in options}
        return cls.from_dict({**derived, "class_names": class_names or ()})

    def to_dict(self) -> dict:
        """Plain types only (lists, not tuples), for checkpoints that load with torch.load(weights_only=True)."""
        plain = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**plain, "mean": list(self.mean), "std": list(self.std), "class_names": list(self.class_names)}

    @property
    def n_channels(self) -> int:
        return INPUT_CHANNELS[self.input_type]

    @property
    def n_segments(self) -> int | None:
        """Segments per clip with segment sampling (each gives one frame), else None."""
        return self.sample_duration if self.temporal_sampling == "segment" else None

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one normalised clip."""
        return self.n_channels, self.sample_duration, self.sample_size, self.sample_size

    def normalizer(self) -> ClipNormalizer:
        """uint8 clips -> the model's normalised float input."""
        return ClipNormalizer(self.mean, self.std, self.value_scale)

    def temporal_transform(self, split: str, *, train_t_crop: str = "random", n_val_samples: int = 3,
                           inference_n_clips: int = 0, align_last: bool = False) -> TemporalTransform:
        """The frame sampling of `split` ('train', 'val', 'inference'); the arguments are the evaluator's choices
        (`align_last`: sliding windows end at the last frame, see temporal_transforms.sliding_window)."""
        return get_temporal_transform(split, sample_duration=self.sample_duration, sample_t_stride=self.sample_t_stride,
                                      train_t_crop=train_t_crop, n_val_samples=n_val_samples,
                                      inference_stride=self.inference_stride, inference_n_clips=inference_n_clips,
                                      sampling=self.temporal_sampling, align_last=align_last)

    def spatial_transform(self, split: str, **crops) -> SpatialTransform:
        """The crops of `split` at this spec's size; `crops`: get_spatial_transform's crop arguments."""
        return get_spatial_transform(split, sample_size=self.sample_size, **crops)

    def describe(self) -> str:
        """One line, for logs."""
        if self.temporal_sampling == "segment":
            frames = f"{self.n_segments} segments of the video, one frame each"
        else:
            frames = (f"{self.sample_duration} frames every {self.sample_t_stride} (windows every "
                      f"{self.inference_stride} frames at inference)")
        numbers = ", ".join(f"{m:.4g}/{s:.4g}" for m, s in zip(self.mean, self.std))
        scores = "sigmoid (multi-label)" if self.multi_label else "softmax"
        return (f"{self.sample_size}x{self.sample_size} px, {frames}, {self.input_type}, mean/std {numbers} "
                f"(value scale {self.value_scale}), {scores} scores, {len(self.class_names)} class names")

    def apply_to(self, opt: argparse.Namespace, *, source: str) -> ClipSpec:
        """Give `opt` this spec's clip options, except those typed on the command line (``opt.explicit_flags``),
        which win as they always have, and the input fields they imply (n_input_channels, mean, std). Returns the
        spec `opt` now describes (with this spec's class names) and logs it; `source` names where it came from."""
        overrides = {name: getattr(opt, name) for name in CLIP_OPTIONS
                     if name in opt.explicit_flags and getattr(opt, name) != getattr(self, name)}
        for name in CLIP_OPTIONS:
            if name not in opt.explicit_flags:
                setattr(opt, name, getattr(self, name))
        resolve_input(opt)
        log.info("clip spec of %s: %s", source, self.describe())
        if not overrides:
            return self
        log.info("the command line overrides it: %s", ", ".join(f"{k}={v}" for k, v in overrides.items()))
        spec = replace(self, **overrides)
        if set(overrides) & set(NORMALISATION_OPTIONS):
            mean, std = normalisation_stats(opt)
            spec = replace(spec, mean=mean, std=std)
        return spec


def _check_options(options: Mapping) -> None:
    """Each clip option has its default's type and, where there is a choice, a known value."""
    for name, value in options.items():
        expected = type(DEFAULT_OPTIONS[name])
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise UserError(f"the clip spec's {name} is {value!r}, not of type {expected.__name__}")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise UserError(f"the clip spec's {name} is {value!r}, not one of {', '.join(_CHOICES[name])}")


def _numbers(values, name: str, n_channels: int) -> tuple[float, ...]:
    if (not isinstance(values, Sequence) or len(values) != n_channels
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
        raise UserError(f"the clip spec's {name} is {values!r}, not {n_channels} numbers")
    return tuple(float(v) for v in values)


def _strings(values, name: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence) or not all(isinstance(v, str) for v in values):
        raise UserError(f"the clip spec's {name} is not a list of strings")
    return tuple(values)
