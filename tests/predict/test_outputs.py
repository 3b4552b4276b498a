"""--predict's page, annotated videos and features, end to end, and the listener they are made by."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import main
from datasets.video_files import probe_video, stream_frames
from engine.features import read_features
from models import factory as model_lib
from opts import parse_opts
from predict import runner as predict
from predict.outputs import PredictOutputs, clips_per_batch_for_annotation
from predict.video_predictor import PredictionListener
from tests.conftest import random_model_checkpoint, run_main
from tests.predict.conftest import EXTERNAL, XSS_NAME, Page
from tests.video_corpus import corpus_frame, write_video

CLASSES = ["walk", "run", "<b>jump</b>"]
FLAGS = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125", "--sample_size", "32",
         "--sample_duration", "8", "--inference_stride", "8", "--n_classes", "3"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_model_checkpoint(tmp_path_factory.mktemp("ckpt"), FLAGS, CLASSES)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    frames = [corpus_frame(i, 96, 64) for i in range(20)]
    write_video(root / "a" / "clip.mp4", frames)
    write_video(root / "b" / "clip.mp4", frames[:12], rotation=90)  # same name elsewhere; a phone video
    write_video(root / Path(XSS_NAME).name, frames[:9])
    return root


def test_predict_writes_page_annotated_videos_and_features(checkpoint, videos, tmp_path):
    code = main.main(["--predict", str(videos), "--resume_path", str(checkpoint), "--result_path", str(tmp_path),
                      "--n_threads", "0", "--no_cuda", "--output_video", "--save_features"])
    assert code == 0
    results = json.loads((tmp_path / "predictions.json").read_text())["results"]
    assert len(results) == 3
    # annotated copies: unique safe names, same frame count and displayed size as the input
    annotated = sorted(p.name for p in (tmp_path / "annotated").iterdir())
    assert annotated == ["clip.mp4", "clip_2.mp4", "img_src_x_onerror_alert_1.mp4"]
    for src, name in [(videos / "a" / "clip.mp4", "clip.mp4"), (videos / "b" / "clip.mp4", "clip_2.mp4")]:
        a, b = probe_video(src), probe_video(tmp_path / "annotated" / name)
        assert (b.n_frames, b.width, b.height, b.rotation) == (a.n_frames, a.width, a.height, 0)
    # the page names every video, links the annotated ones, loads nothing external
    page = Page((tmp_path / "predictions.html").read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert all(video_id in text for video_id in results)
    hrefs = sorted(a["href"] for t, a in page.tags if t == "a")
    assert hrefs == ["annotated/" + n for n in annotated]
    assert not any(EXTERNAL.match(a.get("src", "") or a.get("href", "")) for _, a in page.tags)
    assert not [a for t, a in page.tags if t == "img" and a.get("src") == "x"]
    assert len([t for t, _ in page.tags if t == "img"]) == 9  # 3 thumbnails per video
    # features: one row per segment of predictions.json, the classifier's input width
    f = read_features(tmp_path / "features.h5")
    width = model_lib.generate_model(parse_opts([*FLAGS, "--result_path", "/tmp"])).get_classifier().in_features
    assert width == 64  # resnet-10 at --resnet_widen_factor 0.125
    assert f["videos"] == list(results)
    n_segments = [len(results[v]["segments"]) for v in results]
    assert f["features"].shape == (sum(n_segments), width) and f["video_mean"].shape == (3, width)
    assert f["video_index"].tolist() == [v for v, n in enumerate(n_segments) for _ in range(n)]
    first = results[f["videos"][0]]["segments"]
    assert f["start_s"][: len(first)].tolist() == [s["segment"][0] for s in first]
    assert f["end_s"][: len(first)].tolist() == [s["segment"][1] for s in first]


def test_page_is_written_by_default_and_nothing_else(checkpoint, videos, tmp_path):
    code = main.main(["--predict", str(videos / "a" / "clip.mp4"), "--resume_path", str(checkpoint),
                      "--result_path", str(tmp_path), "--n_threads", "0", "--no_cuda"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "predictions.html", "predictions.json"]


def test_listener_in_streaming_order(tmp_path):
    """The predictor's call pattern: frames as they are decoded, each segment once its clip is scored."""
    src = write_video(tmp_path / "in" / "v.mp4", [corpus_frame(i, 96, 64) for i in range(20)])
    video = SimpleNamespace(video_id=str(src), path=src, meta=probe_video(src))
    outputs = PredictOutputs(tmp_path / "out", class_names=CLASSES, output_video=True, save_features=True)
    assert outputs.wants_features
    outputs.start_video(video)
    segments = []
    for number, seconds, frame in stream_frames(src, video.meta):
        outputs.frame(number, seconds, frame)
        if number % 8 == 7:  # a window of 8 frames is complete: its scores arrive
            start = (number - 7) / 10
            top = [{"label": CLASSES[len(segments) % 3], "score": 0.8}]
            outputs.segment(start, start + 0.8, top, None, torch.full((4,), float(len(segments))))
            segments.append({"segment": [start, start + 0.8], "result": top})
    outputs.segment(1.6, 2.0, [{"label": "walk", "score": 0.5}], None, torch.full((4,), 2.0))
    segments.append({"segment": [1.6, 2.0], "result": [{"label": "walk", "score": 0.5}]})
    outputs.finish_video(SimpleNamespace(error=""))
    # a second video that turns out unusable while decoding: no annotated copy, its thumbnails are still kept
    broken = SimpleNamespace(video_id="broken.mp4", path=src, meta=video.meta)
    outputs.start_video(broken)
    outputs.frame(0, 0.0, np.zeros((64, 96, 3), np.uint8))
    outputs.finish_video(SimpleNamespace(error="no decodable frame"))
    predictions = {"results": {str(src): {"duration": 2.0, "result": [{"label": "walk", "score": 0.6}],
                                          "segments": segments, "problems": ["damaged: 2 frames could not be decoded"]},
                               "earlier.mp4": {"duration": 1.0, "result": [{"label": "run", "score": 0.9}],
                                               "segments": []}}}  # predicted by an earlier run
    written = outputs.close(predictions, unusable={"broken.mp4": "no decodable frame"})
    assert [p.name for p in written] == ["predictions.html", "features.h5"]
    assert probe_video(tmp_path / "out" / "annotated" / "v.mp4").n_frames == 20
    f = read_features(tmp_path / "out" / "features.h5")
    assert f["features"][:, 0].tolist() == [0.0, 1.0, 2.0] and f["video_mean"][0, 0] == pytest.approx(1.0)
    assert f["start_s"].tolist() == [0.0, 0.8, 1.6] and f["end_s"].tolist() == [0.8, 1.6, 2.0]
    html = (tmp_path / "out" / "predictions.html").read_text(encoding="utf-8")
    assert "damaged: 2 frames could not be decoded" in html and 'href="annotated/v.mp4"' in html
    assert "earlier.mp4" in html and "not used: no decodable frame" in html
    assert sorted(p.name for p in (tmp_path / "out" / "annotated").iterdir()) == ["v.mp4"]


def test_flags_need_their_mode(tmp_path):
    for flag, message in [("--output_video", "--output_video needs --predict"),
                          ("--save_features", "--save_features needs --predict or --inference")]:
        proc = run_main(["--result_path", tmp_path, flag])
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_interrupted_run_writes_a_partial_page_and_a_rerun_completes_it(checkpoint, videos, tmp_path):
    class StopInSecondVideo(PredictionListener):
        def __init__(self):
            self.videos = 0

        def start_video(self, video):
            self.videos += 1

        def frame(self, number, seconds, frame):
            if self.videos == 2 and number == 5:
                raise KeyboardInterrupt

    args = ["--predict", str(videos / "a"), "--resume_path", str(checkpoint), "--result_path", str(tmp_path),
            "--n_threads", "0", "--no_cuda", "--output_video", "--save_features"]
    (videos / "a" / "more.mp4").write_bytes((videos / "a" / "clip.mp4").read_bytes())
    try:
        assert predict.run(parse_opts(args), listeners=[StopInSecondVideo()]) == 130
        html = (tmp_path / "predictions.html").read_text(encoding="utf-8")
        assert "partial: interrupted; 1 of 2 videos predicted" in html
        assert [p.name for p in (tmp_path / "annotated").iterdir()] == ["clip.mp4"]  # the second one dropped
        assert read_features(tmp_path / "features.h5")["videos"] == [str(videos / "a" / "clip.mp4")]
        assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left behind
        assert main.main(args) == 0  # the rerun predicts only the second video; the page and features hold both
        html = (tmp_path / "predictions.html").read_text(encoding="utf-8")
        assert "partial:" not in html and str(videos / "a" / "clip.mp4") in html and "more.mp4" in html
        f = read_features(tmp_path / "features.h5")
        assert f["videos"] == [str(videos / "a" / "clip.mp4"), str(videos / "a" / "more.mp4")]
    finally:
        (videos / "a" / "more.mp4").unlink()


def test_batches_are_small_enough_for_the_annotation_buffer():
    # 1080p: ~165 frames fit in the buffer: a 16-frame clip and 9 more every 16 frames
    assert clips_per_batch_for_annotation(1920 * 1080, clip_frames=16, stride=16) == 10
    assert clips_per_batch_for_annotation(3840 * 2160, clip_frames=16, stride=16) == 2  # 4K: ~41 frames
    assert clips_per_batch_for_annotation(7680 * 4320, clip_frames=64, stride=16) == 1  # never below one clip
    assert clips_per_batch_for_annotation(96 * 64, clip_frames=8, stride=8) == 32  # small: the frame cap (256)
