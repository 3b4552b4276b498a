"""GPU JPEG decoding for the loader benchmark: workers read bytes, the GPU decodes, crops and resizes.

Workers only fetch encoded frames and draw the clip parameters (no pixel work at all); the main
process decodes every frame of a batch in one `torchvision.io.decode_jpeg(..., device='cuda')`
call (nvjpeg), then crops, resizes (bilinear with antialiasing, as PIL does) and flips each clip
on the device, giving the same uint8 (N, T, H, W, C) batch as the CPU loader.

torchvision is imported only inside `nvjpeg_available`/`decode_batch`, and only for a CUDA
device, so the CPU path of the project never imports it. `crop_resize_clip` is plain torch and
runs (and is tested) on any device.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from datasets.factory import seed_worker
from datasets.readers import jpeg_size
from datasets.sampling import EpochShardSampler
from datasets.video_dataset import VideoClipDataset, item_seed


def nvjpeg_available(device: torch.device) -> bool:
    """True when `device` is CUDA and torchvision's decode_jpeg can run there."""
    if torch.device(device).type != "cuda":
        return False
    try:
        import torchvision.io  # noqa: F401  (optional dependency, GPU only)
    except Exception:  # ImportError, or a torchvision built against another torch
        return False
    return True


class EncodedClipDataset(Dataset):
    """Training items as (list of encoded frames as uint8 tensors, pixel box, out_size, flip, label).

    Uses the records, temporal transform, reader, spatial parameter draw and per-item seeding of the
    project's training dataset, so it samples the same clips as the CPU loader.
    """

    def __init__(self, base: VideoClipDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        base = self.base
        record = base.records[index]
        rng = random.Random(item_seed(base.seed, epoch, index))
        indices = base.temporal(record.frame_indices, rng)[0]
        encoded = base.loader.reader.fetch(record.path, indices)
        good = [e for e in encoded if e is not None]
        if not good:
            raise RuntimeError(f"no readable frame in {record.path}")
        encoded = [e if e is not None else good[0] for e in encoded]  # benchmark only: no repair statistics
        width, height = jpeg_size(good[0])
        params = base.loader.spatial.sample(width, height, rng)
        left, top, right, bottom = params.box
        box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
        frames = [torch.frombuffer(bytearray(e), dtype=torch.uint8) for e in encoded]
        return frames, box, params.out_size, params.flip, record.label


def collate_encoded(batch: list) -> list:
    """Keep items as they are: decoding happens batched on the GPU."""
    return batch


def crop_resize_clip(frames: torch.Tensor, box: tuple[int, int, int, int], out_size: tuple[int, int],
                     flip: bool) -> torch.Tensor:
    """uint8 frames (T, C, H, W) -> cropped, resized (bilinear, antialiased), flipped uint8 (T, h, w, C)."""
    left, top, right, bottom = box
    x = frames[:, :, top:bottom, left:right].float()
    x = F.interpolate(x, size=(out_size[1], out_size[0]), mode="bilinear", align_corners=False, antialias=True)
    if flip:
        x = x.flip(-1)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def decode_batch(batch: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One nvjpeg call for all frames of the batch -> uint8 clips (N, T, H, W, C) and labels on `device`."""
    from torchvision.io import decode_jpeg  # GPU-only path (see module docstring)

    flat = [f for frames, *_ in batch for f in frames]
    decoded = decode_jpeg(flat, device=device)
    clips, k = [], 0
    for frames, box, out_size, flip, _ in batch:
        clip = torch.stack(decoded[k:k + len(frames)])
        k += len(frames)
        clips.append(crop_resize_clip(clip, box, out_size, flip))
    labels = torch.tensor([item[-1] for item in batch], dtype=torch.long, device=device)
    return torch.stack(clips), labels


def build_encoded_loader(fast_loader: DataLoader, *, workers: int, seed: int) -> DataLoader:
    """A loader of encoded items over the same dataset and sampler settings as `fast_loader`."""
    ds = EncodedClipDataset(fast_loader.dataset)
    return DataLoader(ds, batch_size=fast_loader.batch_size, num_workers=workers,
                      sampler=EpochShardSampler(len(ds), shuffle=True, seed=seed), collate_fn=collate_encoded,
                      persistent_workers=workers > 0, worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(seed))
