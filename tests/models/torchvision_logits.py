"""Reference logits from torchvision's own video models, for tests/models/test_torchvision_weights.py.

Usage: python tests/models/torchvision_logits.py OUT_DIR. Writes OUT_DIR/<name>.pt ({state_dict, x, logits}) for
r3d_18, mc3_18 and r2plus1d_18 with random weights and BN statistics; exits 3 when torchvision's model
definitions cannot be imported. Run as a separate process so the test process never imports torchvision.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

UNAVAILABLE = 3
MODELS = ("r3d_18", "mc3_18", "r2plus1d_18")


def import_video_models():
    """torchvision.models.video, or None.

    Where the wheel's compiled ops do not load with this torch build, its pure-Python model
    definitions still import once the two operator schemas it expects at import time exist.
    """
    try:
        from torchvision.models import video

        return video
    except ImportError:
        return None  # not installed
    except Exception:  # noqa: BLE001 - the compiled ops failed to load; retry with the schemas defined
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    try:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_video_models.lib = lib  # the schemas live as long as the Library object
        from torchvision.models import video
    except Exception:  # noqa: BLE001 - an incompatible build
        return None
    return video


def randomise_batchnorm(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN statistics and affine weights, so eval mode exercises every buffer."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)


def main(out_dir: Path) -> int:
    video = import_video_models()
    if video is None:
        return UNAVAILABLE
    for index, name in enumerate(MODELS):
        torch.manual_seed(index)
        model = getattr(video, name)(weights=None).eval()
        gen = torch.Generator().manual_seed(100 + index)
        randomise_batchnorm(model, gen)
        x = torch.randn(1, 3, 8, 56, 56, generator=gen)
        with torch.no_grad():
            logits = model(x)
        torch.save({"state_dict": model.state_dict(), "x": x, "logits": logits}, out_dir / f"{name}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
