"""util_scripts.gradcam: maps at the clip's time and space size that peak on the object that decides the class; a
segment-sampling multi-label checkpoint is explained on its own clips with sigmoid scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint import load_checkpoint, save_checkpoint
from datasets.factory import build_input_normalizer
from datasets.video_files import probe_video
from engine.forward import prepare_batch
from errors import UserError
from models import factory as model_lib
from opts import parse_opts
from tests.conftest import random_model_checkpoint, save_model_checkpoint
from tests.video_corpus import corpus_frame, write_video
from util_scripts import gradcam

SIZE, T, OBJ = 32, 8, 8
COLORS = [(255, 40, 40), (40, 255, 40)]  # class 0: a red square, class 1: a green one
FLAGS = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--n_classes", "2",
         "--sample_size", str(SIZE), "--sample_duration", str(T), "--no_cuda"]


def synthetic_clip(cls: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(T, SIZE, SIZE, 3) uint8: grey noise (no class information) with a square of the class's colour moving
    in a straight line; and the square's top-left corner (x, y) per frame."""
    clip = np.repeat(rng.integers(0, 256, (T, SIZE, SIZE, 1), dtype=np.uint8), 3, axis=3)
    start, velocity = rng.integers(0, SIZE - OBJ, 2), rng.integers(-3, 4, 2)
    corners = []
    for t in range(T):
        x, y = np.clip(start + velocity * t, 0, SIZE - OBJ)
        clip[t, y: y + OBJ, x: x + OBJ] = COLORS[cls]
        corners.append((int(x), int(y)))
    return clip, corners


def batch(n: int, rng: np.random.Generator, normalizer):
    labels = rng.integers(0, 2, n)
    clips, corners = zip(*(synthetic_clip(int(c), rng) for c in labels))
    x, y = prepare_batch(torch.from_numpy(np.stack(clips)), torch.from_numpy(labels), torch.device("cpu"), normalizer)
    return x, y, corners


@pytest.fixture(scope="module")
def trained():
    """A tiny ResNet trained for a few seconds (one thread: the fastest on a shared CPU) to tell the squares apart."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _train()
    finally:
        torch.set_num_threads(threads)


def _train():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    opt = parse_opts([*FLAGS, "--result_path", "/tmp"])
    normalizer = build_input_normalizer(opt)
    net = model_lib.generate_model(opt)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(40):
        x, y, _ = batch(16, rng, normalizer)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    x, y, _ = batch(32, rng, normalizer)
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.9, accuracy
    return net, opt, normalizer


def test_maps_have_the_clip_size_and_peak_on_the_object(trained):
    net, _, normalizer = trained
    x, y, corners = batch(8, np.random.default_rng(1), normalizer)
    cams, targets, probs = gradcam.grad_cam(net, x, gradcam.find_layer(net, "layer1"))
    assert cams.shape == (8, T, SIZE, SIZE)
    assert float(cams.min()) >= 0 and float(cams.amax(dim=(1, 2, 3)).min()) == pytest.approx(1.0)
    assert torch.equal(targets, probs.argmax(1))
    hits = 0
    for n in range(8):
        for t in range(T):
            py, px = np.unravel_index(int(cams[n, t].argmax()), (SIZE, SIZE))
            x0, y0 = corners[n][t]
            hits += (x0 - 4 <= px < x0 + OBJ + 4) and (y0 - 4 <= py < y0 + OBJ + 4)
    assert hits >= 0.75 * 8 * T, hits
    # the map of a given class: the other class explains the same clips too (shapes), with its own target
    cams1, targets1, _ = gradcam.grad_cam(net, x, gradcam.find_layer(net, "layer1"), target=1)
    assert cams1.shape == cams.shape and targets1.tolist() == [1] * 8


def test_cli_writes_overlay_video_and_strip(trained, tmp_path, capsys):
    net, opt, _ = trained
    ckpt = save_model_checkpoint(tmp_path / "save_1.pth", net, opt, ["red", "green"])
    rng = np.random.default_rng(2)
    frames = [f for _ in range(2) for f in synthetic_clip(0, rng)[0]][:13]
    video = write_video(tmp_path / "red <square>.mp4", [np.ascontiguousarray(np.rot90(f[:, :24])) for f in frames],
                        rotation=90)  # a phone video: stored 32x24 (landscape), shown upright 24x32
    code = gradcam.main(["--resume_path", str(ckpt), "--video", str(video), "--output", str(tmp_path / "cam"),
                         "--layer", "layer3", "--no_cuda"])
    assert code == 0
    out = capsys.readouterr().out
    # windows of 8 frames (the stored options); the last one ends at the last frame, as --predict cuts it
    assert "frames from 0: red" in out and "frames from 5:" in out and "frames from 8:" not in out
    meta_in, meta_out = probe_video(video), probe_video(tmp_path / "cam" / "red_square_gradcam.mp4")
    assert meta_out.n_frames == meta_in.n_frames == 13
    assert (meta_out.width, meta_out.height) == (meta_in.width, meta_in.height) == (24, 32) and meta_out.rotation == 0

    strip = Image.open(tmp_path / "cam" / "red_square_gradcam.png")
    assert strip.height == gradcam.STRIP_HEIGHT and strip.width > 4 * strip.height


def test_bad_target_class_is_a_one_line_error(trained, tmp_path):
    net, opt, _ = trained
    ckpt = save_model_checkpoint(tmp_path / "save_1.pth", net, opt, ["red", "green"])
    video = write_video(tmp_path / "v.mp4", [corpus_frame(i) for i in range(4)])
    with pytest.raises(UserError, match="not a class"):
        gradcam.main(["--resume_path", str(ckpt), "--video", str(video), "--output", str(tmp_path),
                      "--target_class", "blue"])
    with pytest.raises(UserError, match="not a layer"):
        gradcam.main(["--resume_path", str(ckpt), "--video", str(video), "--output", str(tmp_path),
                      "--layer", "layer9"])


SEGMENT_FLAGS = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "32",
                 "--sample_duration", "4", "--n_classes", "3", "--multi_label", "--temporal_sampling", "segment"]


@pytest.mark.parametrize(("stored_spec", "extra", "clips"), [
    (True, [], [[2, 7, 12, 17]]),  # the centres of 4 segments of the 20 frames, as --predict takes them
    (False, ["--inference_n_clips", "2", "--target_class", "cup"], [[1, 6, 11, 16], [3, 8, 13, 18]]),
])
def test_segment_multi_label_checkpoint_is_explained_on_its_own_clips(tmp_path, monkeypatch, capsys, stored_spec,
                                                                      extra, clips):
    ckpt = random_model_checkpoint(tmp_path, SEGMENT_FLAGS, ["sit", "stand", "cup"])
    if not stored_spec:  # a checkpoint made before the clip spec: derived from its stored options
        payload = load_checkpoint(ckpt)
        del payload["clip_spec"]
        save_checkpoint(ckpt, payload)
    video = write_video(tmp_path / "v.mp4", [np.full((32, 40, 3), 10 * i, np.uint8) for i in range(20)])
    seen = []

    def recording(model, clips, layer, target=None, *, multi_label=False):
        result = gradcam_grad_cam(model, clips, layer, target, multi_label=multi_label)
        with torch.no_grad():
            seen.append((clips.detach().clone(), model(clips), result[2]))
        return result

    gradcam_grad_cam = gradcam.grad_cam
    monkeypatch.setattr(gradcam, "grad_cam", recording)
    assert gradcam.main(["--resume_path", str(ckpt), "--video", str(video), "--output", str(tmp_path / "cam"),
                         "--no_cuda", *extra]) == 0
    out = capsys.readouterr().out
    # the model saw the segment-sampled frames (frame i is grey level 10 i), not dense windows of 4
    opt = parse_opts(["--result_path", "r"])
    mean, std = torch.tensor(opt.mean)[:, None, None], torch.tensor(opt.std)[:, None, None]
    levels = [((x[0].flatten(2) * std + mean) * 255).mean(dim=(0, 2)) for x, _, _ in seen]
    assert [(level / 10).round().int().tolist() for level in levels] == clips
    for (_, logits, scores), clip in zip(seen, clips):
        torch.testing.assert_close(scores, torch.sigmoid(logits))  # sigmoids of the logits, not a softmax
        assert abs(float(scores.sum()) - 1) > 0.05
        target = 2 if extra else int(logits.argmax())
        assert f"frames {', '.join(map(str, clip))}: {['sit', 'stand', 'cup'][target]} " \
               f"{float(scores[0, target]):.3f}" in out
    assert probe_video(tmp_path / "cam" / "v_gradcam.mp4").n_frames == 20
    assert (tmp_path / "cam" / "v_gradcam.png").is_file()
