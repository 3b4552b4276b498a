"""Model factory for the CLI: build from options or checkpoint info, load pretrained weights, pick
the parameters to fine-tune, and describe a model's size and cost.

Only this module reads the option namespace; ``models/`` receives explicit keyword arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from checkpoint import Checkpoint, Resume, load_checkpoint, strip_wrapper_prefixes, unwrap_model
from errors import UserError
from models import MODEL_DEPTHS, MODEL_FAMILIES, build_model
from models.common import STAGE_WIDTHS
from models.torchvision_weights import TorchvisionArch, convert_torchvision_state_dict, detect_torchvision_arch

logger = logging.getLogger(__name__)

# Options every family takes: builder keyword -> option name (the original's flag spellings).
_COMMON_OPTS = {
    "n_classes": "n_classes",
    "n_input_channels": "n_input_channels",
    "conv1_t_size": "conv1_t_size",
    "conv1_t_stride": "conv1_t_stride",
    "no_max_pool": "no_max_pool",
}
# Family-specific options, same mapping.
_FAMILY_OPTS: dict[str, dict[str, str]] = {
    "resnet": {"shortcut_type": "resnet_shortcut", "widen_factor": "resnet_widen_factor"},
    "resnet2p1d": {
        "shortcut_type": "resnet_shortcut",
        "widen_factor": "resnet_widen_factor",
        "conv1_mid_planes": "conv1_mid_planes",
        "block_mid_planes": "block_mid_planes",
    },
    "mc3": {"shortcut_type": "resnet_shortcut", "widen_factor": "resnet_widen_factor"},
    "preresnet": {"shortcut_type": "resnet_shortcut", "widen_factor": "resnet_widen_factor"},
    "wideresnet": {"shortcut_type": "resnet_shortcut", "k": "wide_resnet_k"},
    "resnext": {"shortcut_type": "resnet_shortcut", "cardinality": "resnext_cardinality"},
    "densenet": {},
}
_DEFAULTS = {
    "n_input_channels": 3,
    "conv1_t_size": 7,
    "conv1_t_stride": 1,
    "no_max_pool": False,
    "resnet_shortcut": "B",
    "resnet_widen_factor": 1.0,
    "wide_resnet_k": 2,
    "resnext_cardinality": 32,
    "conv1_mid_planes": 0,
    "block_mid_planes": "per_conv",
}
_PLAIN_TYPES = {
    "n_classes": int,
    "n_input_channels": int,
    "conv1_t_size": int,
    "conv1_t_stride": int,
    "no_max_pool": bool,
    "widen_factor": float,
    "k": int,
    "cardinality": int,
    "shortcut_type": str,
    "conv1_mid_planes": int,
    "block_mid_planes": str,
}


def model_kwargs_from_opts(opt: argparse.Namespace) -> dict:
    """Builder keyword arguments for ``opt.model`` as plain Python values (stored in checkpoints)."""
    if opt.model not in _FAMILY_OPTS:
        raise UserError(f"unknown --model {opt.model!r}; valid models: {', '.join(sorted(MODEL_FAMILIES))}")
    kwargs = {}
    for key, flag in {**_COMMON_OPTS, **_FAMILY_OPTS[opt.model]}.items():
        value = getattr(opt, flag, _DEFAULTS.get(flag))
        kwargs[key] = _PLAIN_TYPES[key](value)
    if "shortcut_type" in kwargs:
        # As in the original, anything other than 'A' means projection shortcuts (B).
        kwargs["shortcut_type"] = "A" if kwargs["shortcut_type"] == "A" else "B"
    return kwargs


def _build(family: str, depth: int, kwargs: dict) -> nn.Module:
    try:
        return build_model(family, depth, **kwargs)
    except ValueError as e:
        raise UserError(str(e)) from None
    except TypeError as e:
        raise UserError(f"bad options for {family}-{depth}: {e}") from None


def generate_model(opt: argparse.Namespace) -> nn.Module:
    """Build the bare model for ``--model``/``--model_depth`` with ``opt.n_classes`` outputs."""
    return _build(opt.model, int(opt.model_depth), model_kwargs_from_opts(opt))


def build_model_from_checkpoint_info(arch: str, model_kwargs: Mapping) -> nn.Module:
    """Rebuild a model from a checkpoint's ``arch`` ("resnet-50") and ``model_kwargs``."""
    match = re.fullmatch(r"([A-Za-z0-9_]+)-(\d+)", str(arch))
    if match is None:
        raise UserError(f"cannot parse arch {arch!r}: expected '<model>-<depth>' such as 'resnet-50'")
    return _build(match.group(1), int(match.group(2)), dict(model_kwargs))


# The option names that describe an architecture (what a file without `model_kwargs` needs from the flags).
MODEL_FLAGS = ("model", "model_depth", *_COMMON_OPTS.values(),
               *sorted({flag for flags in _FAMILY_OPTS.values() for flag in flags.values()}))
# Classifier weights of the families (ResNets: fc, DenseNet: classifier); their first dimension is the class count.
_CLASSIFIER_KEYS = ("fc.weight", "classifier.weight")


@dataclass
class LoadedModel:
    """A trained model rebuilt from a checkpoint (eval mode, CPU) and what callers need next to it."""

    model: nn.Module
    arch: str
    model_kwargs: dict
    class_names: list[str] | None  # None when the file stores none
    weights: str = "raw"  # "ema" when the EMA average was loaded


def model_from_checkpoint(payload: Mapping, overrides: Mapping | None = None, *,
                          source: str = "checkpoint", weights: str = "ema") -> LoadedModel:
    """Rebuild the model a checkpoint (as `load_checkpoint` returns it) holds and load its weights strictly.

    Checkpoints of this toolkit describe themselves (``arch`` + ``model_kwargs``). For other files (the
    original's releases, bare state_dicts) the architecture comes from ``overrides``: model flags by option
    name (``model``, ``model_depth``, ``resnet_shortcut``, ...; see MODEL_FLAGS), the ones a user gave.
    ``model``/``model_depth`` default to the file's ``arch``, ``n_classes`` to its classifier's size and
    the rest to the flags' defaults. ``source`` names the file in error messages. ``weights`` 'ema' loads
    the EMA average of a checkpoint trained with --ema_decay (see `Checkpoint.eval_weights`), 'raw' its trained
    weights.
    """
    payload = Checkpoint(payload)  # any mapping of schema keys, e.g. one assembled in memory
    state_dict, chosen = payload.eval_weights(weights)
    state_dict = strip_wrapper_prefixes(state_dict)
    stored_arch = payload.arch
    if stored_arch and payload.model_kwargs is not None:
        arch, kwargs = stored_arch, payload.model_kwargs
    else:
        arch, kwargs = _description_from_flags(dict(overrides or {}), stored_arch, state_dict, source)
    net = build_model_from_checkpoint_info(arch, kwargs)
    load_state_dict_compat(net, state_dict, source=source, source_arch=stored_arch)
    if chosen == "ema":
        logger.info("%s: using its EMA weights (--eval_weights raw for the raw ones)", source)
    return LoadedModel(net.eval(), arch, kwargs, payload.class_names, chosen)


def _description_from_flags(flags: dict, stored_arch: str | None, state_dict: Mapping,
                            source: str) -> tuple[str, dict]:
    if flags.get("model") is None or flags.get("model_depth") is None:
        if stored_arch is None:
            raise UserError(f"{source} does not say which model it holds: give --model and --model_depth")
        flags["model"], flags["model_depth"] = stored_arch.rsplit("-", 1)
    if flags.get("n_classes") is None:
        heads = [state_dict[k] for k in _CLASSIFIER_KEYS if k in state_dict]
        if not heads:
            raise UserError(f"cannot read the class count from {source}: give --n_classes")
        flags["n_classes"] = heads[0].shape[0]
    opt = argparse.Namespace(**{k: v for k, v in flags.items() if v is not None})
    return f"{opt.model}-{int(opt.model_depth)}", model_kwargs_from_opts(opt)


def load_state_dict_compat(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    class_flag: str = "--n_classes",
    source_arch: str | None = None,
) -> None:
    """Strictly load ``state_dict`` into the bare ``model``, tolerating wrapper prefixes and old files.

    ``module.``/``_orig_mod.`` prefixes are stripped and missing ``num_batches_tracked`` buffers (files
    from before PyTorch 0.4.1) are taken from the model. Any other difference raises a one-line
    :class:`UserError` that names it (architecture, shortcut type, input channels, class count);
    ``source``, ``class_flag`` and ``source_arch`` only shape that message.
    """
    model = unwrap_model(model)
    if isinstance(state_dict, Checkpoint):  # the whole checkpoint was passed
        state_dict = state_dict.state_dict
    found = strip_wrapper_prefixes(state_dict)
    expected = model.state_dict()
    for key, value in expected.items():
        # Only for BNs the file does have, so a file of another depth still shows as a mismatch.
        bn_present = key.removesuffix("num_batches_tracked") + "running_mean" in found
        if key.endswith("num_batches_tracked") and key not in found and bn_present:
            found[key] = value.clone()
    problem = _describe_mismatch(model, expected, found, source=source, class_flag=class_flag, source_arch=source_arch)
    if problem is not None:
        raise UserError(problem)
    model.load_state_dict(found, strict=True)


def _describe_mismatch(
    model: nn.Module, expected: dict, found: dict, *, source: str, class_flag: str, source_arch: str | None
) -> str | None:
    bad_values = [k for k, v in found.items() if not isinstance(v, torch.Tensor)]
    if bad_values:
        return f"{source} state_dict entry {bad_values[0]!r} is not a tensor"
    model_arch = getattr(model, "arch", type(model).__name__)
    head = f"{model.classifier_name}.weight" if hasattr(model, "classifier_name") else None
    head_prefix = head.removesuffix("weight") if head else None
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [
        k
        for k in expected
        if k in found and not (head_prefix and k.startswith(head_prefix)) and found[k].shape != expected[k].shape
    ]
    if missing or unexpected or reshaped:
        arch_note = f" (saved from {source_arch})" if source_arch and source_arch != model_arch else ""
        details = []
        if reshaped:
            k = reshaped[0]
            hint = _shape_hint(k, found[k], expected[k]) or _width_hint(model_arch, found, expected)
            details.append(
                f"{k} has shape {tuple(found[k].shape)} in the file but {tuple(expected[k].shape)} in the "
                f"model{hint}"
            )
        if missing or unexpected:
            details.append(f"file: {_layout(found)}; model: {_layout(expected)}")
            details.append(f"missing keys {_first(missing)}, unexpected keys {_first(unexpected)}")
        return (
            f"{source}{arch_note} does not match the model {model_arch} (check --model, --model_depth, "
            f"--resnet_shortcut, --resnet_widen_factor and the stem options): " + "; ".join(details)
        )
    if head is not None and found[head].shape != expected[head].shape:
        return (
            f"{source} {model.classifier_name} has {found[head].shape[0]} classes but {class_flag} is "
            f"{expected[head].shape[0]}"
        )
    return None


def _shape_hint(key: str, found: torch.Tensor, expected: torch.Tensor) -> str:
    first_conv = key in ("conv1.weight", "conv1_s.weight", "features.conv1.weight")
    if first_conv and found.ndim == 5 and found.shape[1] != expected.shape[1]:
        return f" (the file expects {found.shape[1]} input channels: 3 for rgb, 2 for flow)"
    if first_conv and found.ndim == 5 and found.shape[2] != expected.shape[2]:
        return f" (the file was trained with --conv1_t_size {found.shape[2]})"
    return ""


def _width_hint(model_arch: str, found: Mapping, expected: Mapping) -> str:
    """' (... the file was trained with --resnet_widen_factor F)' when the file's stages are wider or narrower.

    F is read from the last stage, whose width is int(512 * F): F = width / 512 rebuilds every stage exactly
    (int(64 * F) = int(width / 8), ...), also for factors like 0.3 whose stem alone would round differently.
    """
    family = model_arch.rsplit("-", 1)[0]
    family_opts = _FAMILY_OPTS.get(family, {})
    flag = family_opts.get("widen_factor") or family_opts.get("k")  # densenet, resnext: no width flag
    widths = _last_stage_width(found), _last_stage_width(expected)
    if flag is None or None in widths or widths[0] == widths[1]:
        return ""
    factor = widths[0] / STAGE_WIDTHS[-1]
    value = int(factor) if factor.is_integer() else factor
    return (f" (its last stage is {widths[0]} channels wide, the model's {widths[1]}: the file was trained with "
            f"--{flag} {value})")


def _last_stage_width(state_dict: Mapping) -> int | None:
    """Output channels of the first conv of layer4's first block: the stage's width (planes) in every ResNet
    family ((2+1)D basic blocks: of its temporal half, conv1_t; conv1_s has the factorised middle width)."""
    for key in ("layer4.0.conv1_t.weight", "layer4.0.conv1.weight"):
        if key in state_dict:
            return state_dict[key].shape[0]
    return None


def _first(keys: list[str], n: int = 3) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _layout(state_dict: Mapping) -> str:
    """A short human summary of a ResNet-style key layout, to explain arch mismatches."""
    keys = list(state_dict)
    if any(k.startswith("features.") for k in keys):
        blocks = sorted({k.split(".")[1] for k in keys if k.startswith("features.denseblock")})
        layers = [len({k.split(".")[2] for k in keys if k.startswith(f"features.{b}.")}) for b in blocks]
        return f"densenet with dense layers {'-'.join(map(str, layers))}"
    stem = "(2+1)D stem" if "conv1_s.weight" in keys else "3D stem"
    counts = []
    for stage in range(1, 5):
        ids = {k.split(".")[1] for k in keys if k.startswith(f"layer{stage}.")}
        counts.append(len(ids))
    kind = "bottleneck" if any(".conv3." in k for k in keys) else "basic"
    shortcut = "B (conv projections)" if any(".downsample.0." in k for k in keys) else "A (no projection weights)"
    return f"{stem}, {kind} blocks {'-'.join(map(str, counts))}, shortcut {shortcut}"


def load_pretrained_model(model: nn.Module, pretrain_path: str | os.PathLike, n_finetune_classes: int) -> nn.Module:
    """Load a pretrained file strictly into ``model`` (built with the pretrain class count), then give it
    a fresh classifier head with ``n_finetune_classes`` outputs, as the original does. A checkpoint trained
    with --ema_decay gives its EMA weights (the ones its validation scored)."""
    logger.info("loading pretrained model %s", pretrain_path)
    checkpoint = load_checkpoint(pretrain_path)
    source = f"pretrained file {pretrain_path}"
    state_dict, chosen = checkpoint.eval_weights()
    if chosen == "ema":
        logger.info("%s: using its EMA weights", source)
    torchvision_arch = detect_torchvision_arch(state_dict)
    if torchvision_arch is not None:
        _load_torchvision_weights(model, state_dict, torchvision_arch, source=source)
    else:
        load_state_dict_compat(
            model,
            state_dict,
            source=source,
            class_flag="--n_pretrain_classes",
            source_arch=checkpoint.arch,
        )
    unwrap_model(model).reset_classifier(n_finetune_classes)
    return model


def _load_torchvision_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: TorchvisionArch, *, source: str
) -> None:
    """Load a torchvision video ResNet state_dict; on any mismatch, name the flags that fit the file."""
    logger.info("%s holds torchvision's %s weights; converting them to %s-%d", source, arch.name, arch.family,
                arch.depth)
    try:
        load_state_dict_compat(model, convert_torchvision_state_dict(state_dict, arch), source=source)
    except UserError:
        raise UserError(
            f"{source} holds torchvision's {arch.name} weights, which need the model flags {arch.flags} "
            "(other model options at their defaults)"
        ) from None


def get_fine_tuning_parameters(model: nn.Module, ft_begin_module: str) -> list[nn.Parameter]:
    """Parameters to optimise when fine-tuning from the top-level module ``ft_begin_module`` on.

    Parameters of earlier stages get ``requires_grad=False`` (so no gradient is computed for them)
    and are not returned; ``''`` returns every parameter. An unknown name is a :class:`UserError`
    listing the valid names.
    """
    bare = unwrap_model(model)
    if not ft_begin_module:
        return list(bare.parameters())
    stages = bare.named_stages()
    names = [name for name, _ in stages]
    if ft_begin_module not in names:
        raise UserError(
            f"--ft_begin_module {ft_begin_module!r} is not a module of {getattr(bare, 'arch', 'this model')}; "
            f"valid names: {', '.join(names)}"
        )
    start = names.index(ft_begin_module)
    selected = []
    for index, (_, module) in enumerate(stages):
        for param in module.parameters():
            param.requires_grad_(index >= start)
            if index >= start:
                selected.append(param)
    return selected


def model_for_run(opt: argparse.Namespace, dist, resume: Resume | None) -> nn.Module:
    """main.py's bare model on ``dist.device``: built from the flags, pretrained head swapped, resumed weights
    loaded, size logged on the main process, BatchNorm synchronised if asked."""
    net = generate_model(opt)
    if opt.pretrain_path is not None:
        if resume is None:
            logger.info("loading pretrained model %s", opt.pretrain_path)
            net = load_pretrained_model(net, opt.pretrain_path, opt.n_finetune_classes)
        else:  # the resumed weights replace the pretrained ones anyway; only the head shape matters
            net.reset_classifier(opt.n_finetune_classes)
    if resume is not None:
        arch = resume.payload.arch
        if arch is not None and arch != opt.arch:
            raise UserError(f"{resume.path} holds a {arch} model but the flags ask for {opt.arch} "
                            "(check --model and --model_depth)")
        # Training resumes the raw weights (the EMA has its own copy); evaluating only takes --eval_weights.
        state_dict, chosen = resume.payload.eval_weights(opt.eval_weights if opt.no_train else "raw")
        load_state_dict_compat(net, state_dict, source=f"checkpoint {resume.path}", source_arch=arch)
        logger.info("loaded %sweights of epoch %d from %s", "EMA " if chosen == "ema" else "", resume.epoch,
                    resume.path)
    sample = (1, opt.n_input_channels, opt.sample_duration, opt.sample_size, opt.sample_size)
    if dist.is_main:
        info = describe_model(net.eval(), sample)  # eval: a 1-clip batch can't feed train-mode BN
        net.train()
        logger.info("model %s: %.2f M parameters, %.2f GFLOPs per clip %s", opt.arch, info["n_params"] / 1e6,
                    info["gflops"], "x".join(map(str, sample[1:])))
    if opt.batchnorm_sync:
        if dist.device.type != "cuda" and dist.distributed:
            raise UserError("--batchnorm_sync needs CUDA devices (SyncBatchNorm does not run on the CPU)")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(dist.device)
    if dist.device.type == "cuda":
        net = net.to(memory_format=torch.channels_last_3d)
    return net


def describe_model(model: nn.Module, sample_shape: tuple[int, ...]) -> dict:
    """Parameter count and GFLOPs per clip for clips of ``sample_shape`` ((C, T, H, W) or (N, C, T, H, W)).

    FLOPs are counted by ``torch.utils.flop_counter`` (2 per multiply-add; convs and matmuls), on
    meta tensors, so nothing is computed and the model's weights and statistics are untouched.
    """
    bare = unwrap_model(model)
    shape = tuple(sample_shape)
    if len(shape) == 4:
        shape = (1, *shape)
    counter = FlopCounterMode(display=False)
    with counter:
        _meta_forward(bare, shape)
    return {
        "n_params": sum(p.numel() for p in bare.parameters()),
        "gflops": counter.get_total_flops() / shape[0] / 1e9,
    }


def _meta_forward(bare: nn.Module, shape: tuple[int, ...]) -> None:
    """Run ``bare`` on a meta tensor of ``shape``: shapes and FLOPs only, weights and statistics untouched."""
    meta_state = {name: torch.empty_like(t, device="meta") for name, t in bare.state_dict(keep_vars=True).items()}
    with torch.no_grad():
        torch.func.functional_call(bare, meta_state, (torch.empty(shape, device="meta"),))


def fewest_norm_values(model: nn.Module, clip_shape: tuple[int, int, int, int]) -> tuple[str, int] | None:
    """(name, values per channel) of the BatchNorm layer that sees the fewest values per channel of one clip of
    ``clip_shape`` (C, T, H, W), i.e. the smallest feature map a BatchNorm normalises; None without BatchNorm."""
    bare = unwrap_model(model)
    seen: dict[str, int] = {}

    def record(name: str):
        def hook(_module, inputs):
            seen[name] = inputs[0].numel() // inputs[0].shape[1]  # a batch of one clip: values per channel
        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in bare.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = bare.training
    try:
        bare.eval()  # train-mode BatchNorm would refuse the one-value maps this looks for
        _meta_forward(bare, (1, *clip_shape))
    finally:
        bare.train(was_training)
        for handle in handles:
            handle.remove()
    return min(seen.items(), key=lambda item: item[1]) if seen else None


def check_batch_norm_can_train(net: nn.Module, opt: argparse.Namespace) -> None:
    """UserError before training when a batch would give a BatchNorm layer a single value per channel (batches
    of one clip whose feature map shrinks to 1x1x1): train-mode BatchNorm cannot normalise one value (PyTorch
    raises at the first batch, and the layer's output would carry nothing of the input anyway)."""
    # SyncBatchNorm normalises over every process's clips; plain BatchNorm over this process's share.
    clips = opt.batch_size if opt.batchnorm_sync else getattr(opt, "process_batch_size", opt.batch_size)
    if clips > 1:
        return  # a last batch of one clip is dropped by the training loader
    clip = (opt.n_input_channels, opt.sample_duration, opt.sample_size, opt.sample_size)
    fewest = fewest_norm_values(net, clip)
    if fewest is None or fewest[1] > 1:
        return
    share = "" if clips == opt.batch_size else f" ({clips} clip per process: it is the total over all processes)"
    raise UserError(f"--batch_size {opt.batch_size}{share} cannot train {opt.arch} on "
                    f"{opt.sample_duration}x{opt.sample_size}x{opt.sample_size} clips: BatchNorm layer {fewest[0]} "
                    "would normalise a single value per channel; use --batch_size 2 or more (lower "
                    "--accumulate_grad_batches to keep the step size) or larger --sample_size/--sample_duration")


__all__ = [
    "MODEL_DEPTHS",
    "MODEL_FAMILIES",
    "LoadedModel",
    "MODEL_FLAGS",
    "build_model_from_checkpoint_info",
    "check_batch_norm_can_train",
    "describe_model",
    "fewest_norm_values",
    "generate_model",
    "get_fine_tuning_parameters",
    "load_pretrained_model",
    "load_state_dict_compat",
    "model_for_run",
    "model_from_checkpoint",
    "model_kwargs_from_opts",
]
