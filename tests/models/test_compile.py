"""`--compile` on every model family: torch.compile gives the eager outputs (and gradients).

Each family's smallest model goes through dynamo + AOTAutograd (backend 'aot_eager': full-graph
capture and functionalisation, everything but inductor's code generation). One family also runs
a compiled training step (forward, backward, BN statistics). Inductor itself is compiled for one
more family here (resnet is compiled in tests/models/test_models.py): a CPU inductor build takes 20-60 s
per model on 2 cores, and the six families under inductor took over 3 minutes, so it is marked slow.
"""

from __future__ import annotations

import pytest
import torch

from models import MODEL_DEPTHS
from tests.conftest import family_clip as _clip
from tests.conftest import smallest_family_model as _model

FAMILIES = sorted(MODEL_DEPTHS)


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_forward_matches_eager(family):
    torch._dynamo.reset()
    model, x = _model(family).eval(), _clip(family, batch=1)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("family", ["preresnet"])
def test_compiled_train_step_matches_eager(family):
    torch._dynamo.reset()
    eager_model, x = _model(family), _clip(family)
    compiled_model = _model(family)  # same seed: identical weights, separate BN running statistics
    out_e, grads_e = _loss_and_grads(eager_model.train(), x)
    compiled = torch.compile(compiled_model.train(), backend="aot_eager", fullgraph=True)
    out_c, grads_c = _loss_and_grads(compiled, x)
    torch.testing.assert_close(out_c, out_e, atol=1e-4, rtol=1e-4)
    assert len(grads_c) == len(grads_e) > 0
    for g_c, g_e in zip(grads_c, grads_e):
        torch.testing.assert_close(g_c, g_e, atol=1e-4, rtol=1e-3)
    # Running statistics are updated by the compiled graph exactly as in eager mode.
    torch.testing.assert_close(compiled_model.state_dict(), eager_model.state_dict(), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_inductor_compiles_resnet2p1d():
    torch._dynamo.reset()
    model, x = _model("resnet2p1d").eval(), _clip("resnet2p1d")
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
