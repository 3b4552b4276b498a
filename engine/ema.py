"""An exponential moving average (EMA) of a model's weights and BatchNorm buffers, and its checkpoint fields.

Built on torch's ``AveragedModel``: the first update copies the model, each later one moves the average
towards the model by ``1 - decay`` (``ema = decay * ema + (1 - decay) * weights``), once per optimiser step.
Checkpoints keep the raw weights in ``state_dict`` (as always) and the average, with the same keys, in
``ema_state_dict``; ``ema_updates`` counts the updates so a resumed average continues exactly.
"""

from __future__ import annotations

import logging

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from checkpoint import Checkpoint, strip_wrapper_prefixes, unwrap_model

log = logging.getLogger(__name__)

def build_ema(net: nn.Module, decay: float) -> AveragedModel | None:
    """The EMA of the bare ``net`` (on its device), or None for ``decay`` 0 (no EMA)."""
    if decay <= 0:
        return None
    return AveragedModel(unwrap_model(net), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def ema_payload(ema: AveragedModel | None) -> dict:
    """The checkpoint fields of ``ema`` (none without one)."""
    if ema is None:
        return {}
    return {"ema_state_dict": strip_wrapper_prefixes(ema.module.state_dict()),
            "ema_updates": int(ema.n_averaged.item())}


def restore_ema(ema: AveragedModel | None, payload: Checkpoint, *, source: str) -> None:
    """Continue the average a checkpoint holds; one without (or a fresh run) starts it at the next step."""
    if ema is None:
        return
    weights, kind = payload.eval_weights("ema")
    if kind != "ema":
        log.warning("%s holds no EMA weights; the average starts from the resumed weights", source)
        return
    ema.module.load_state_dict(strip_wrapper_prefixes(weights), strict=True)
    ema.n_averaged.fill_(payload.ema_updates)
