"""predictions.html: self-contained (nothing external), every video named, names and labels escaped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from datasets.video_files import probe_video, stream_frames
from predict.report_html import ThumbnailSampler, VideoEntry, entries_from_predictions, render_report, write_report
from tests.predict.conftest import EXTERNAL, XSS_LABEL, XSS_NAME, Page
from tests.video_corpus import corpus_frame, write_video


def _entries(tmp_path: Path) -> list[VideoEntry]:
    video = write_video(tmp_path / "v.mp4", [corpus_frame(i, 96, 64) for i in range(20)])
    meta = probe_video(video)
    sampler = ThumbnailSampler(meta.n_frames)
    for number, seconds, frame in stream_frames(video, meta):
        sampler.add(number, seconds, frame)
    top = [{"label": "walk", "score": 0.7}, {"label": XSS_LABEL, "score": 0.2}, {"label": "run & jump", "score": 0.1}]
    predictions = {"results": {
        "a/clip.mp4": {"duration": 2.0, "result": top,
                       "segments": [{"segment": [0.0, 0.8], "result": top},
                                    {"segment": [0.8, 2.0], "result": top[::-1]}]},
        XSS_NAME: {"duration": 1.0, "result": top[1:], "segments": [{"segment": [0.0, 1.0], "result": top[1:]}]},
        "broken.avi": {"duration": 0.5, "result": top, "segments": []},
    }}
    return entries_from_predictions(predictions, thumbnails={"a/clip.mp4": sampler.images},
                                    problems={"broken.avi": ["2 packets failed to decode <frames 3-4>"]},
                                    annotated={"a/clip.mp4": "annotated/clip.mp4"})


def test_thumbnails_are_small_jpegs_spread_over_the_video(tmp_path):
    video = write_video(tmp_path / "v.mp4", [corpus_frame(i, 96, 64) for i in range(30)])
    sampler = ThumbnailSampler(30, count=3)
    for number, seconds, frame in stream_frames(video):
        sampler.add(number, seconds, frame)
    assert [round(t.seconds, 1) for t in sampler.images] == [0.5, 1.5, 2.5]
    assert all(t.uri.startswith("data:image/jpeg;base64,") and len(t.uri) < 8000 for t in sampler.images)
    lossy = ThumbnailSampler(30, count=3)  # frames 5..20 lost: the next frame stands in, once
    for k in [0, 1, 2, 3, 4, 21, 22, 29]:
        lossy.add(k, k / 10, np.zeros((64, 96, 3), np.uint8))
    assert [t.seconds for t in lossy.images] == [2.1, 2.9]


def test_page_is_self_contained_and_escaped(tmp_path):
    path = write_report(tmp_path / "predictions.html", _entries(tmp_path), title="Predictions <of> run",
                        checkpoint="save_<1>.pth")
    html = path.read_text(encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any other output, not private
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    page = Page(html)
    text = " ".join(page.text)
    for name in ["a/clip.mp4", XSS_NAME, "broken.avi"]:  # every video named, as text
        assert name in text
    assert XSS_LABEL in text and "run & jump" in text and "save_<1>.pth" in text
    assert "<frames 3-4>" in text  # problems shown
    # nothing external: no <link>, scripts only inline, no http(s):// or protocol-relative src/href/url()
    tags = [t for t, _ in page.tags]
    assert "link" not in tags and "iframe" not in tags and "object" not in tags
    assert tags.count("script") == 1 and all("src" not in a for t, a in page.tags if t == "script")
    for _, attrs in page.tags:
        for key in ("src", "href", "action", "poster"):
            if attrs.get(key):
                assert not EXTERNAL.match(attrs[key]), attrs
                assert attrs[key].startswith("data:image/jpeg;base64,") or attrs[key] == "annotated/clip.mp4"
        assert not any(k.startswith("on") for k in attrs), attrs  # no event handler came from a name
        assert "url(" not in attrs.get("style", "")
    assert "url(" not in " ".join(page.styles) and "@import" not in " ".join(page.styles)
    # the script holds no data, and no name or label escaped into code
    assert "alert" not in page.scripts[0]
    img_srcs = [a["src"] for t, a in page.tags if t == "img"]
    assert len(img_srcs) == 3 and "x" not in img_srcs
    # a Content-Security-Policy that loads nothing from anywhere else
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src data:" in csp and "'sha256-" in csp
    assert html.count("annotated/clip.mp4") == 1


def test_a_thousand_videos_one_row_each():
    top = [{"label": f"class {k}", "score": 0.5 / (k + 1)} for k in range(5)]
    entries = [VideoEntry(f"dir/video_{i:04d}.mp4", 10.0, top,
                          [{"segment": [s, s + 1.0], "result": top[s % 5:] + top[: s % 5]} for s in range(10)])
               for i in range(1000)]
    html = render_report(entries)
    page = Page(html)
    rows = [a for t, a in page.tags if t == "tr" and "data-order" in a]
    assert len(rows) == 1000 and rows[999]["data-name"] == "dir/video_0999.mp4"
    assert len(html) < 5_000_000


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs the chromium browser")
def test_the_inline_script_runs_under_the_page_policy(tmp_path):
    """The page's Content-Security-Policy allows its own script (by hash) and nothing else: in a real browser the
    script runs (it marks <html class="js"> to show the filter controls)."""
    path = write_report(tmp_path / "predictions.html", _entries(tmp_path))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert '<html lang="en" class="js">' in dom
    assert "onerror" not in Page(dom).tags[0][1]  # and the names stay text in the live document
    assert not [a for t, a in Page(dom).tags if t == "img" and a.get("src") == "x"]
