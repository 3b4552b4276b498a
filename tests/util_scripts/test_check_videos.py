"""util_scripts.check_videos: the pre-flight scan flags every kind of awkward file of the corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from errors import UserError
from tests.support import read_only_folder, run_tool
from tests.video_corpus import DUP_PTS_FRAMES, N_FRAMES, make_corpus, make_timestamp_corpus
from util_scripts import check_videos
from util_scripts.common import VideoItem


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def report(path: Path) -> dict[str, dict]:
    return {row["video"]: row for row in json.loads(path.read_text())["videos"]}


def test_the_corpus_is_flagged_kind_by_kind_and_fails(corpus, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert check_videos.main([str(corpus.root), "--n_jobs", "2", "--output", str(out)]) == 1
    rows = report(out)
    kinds = {name: row["kinds"] for name, row in rows.items()}
    assert kinds["clean.mp4"] == [] and kinds["upright.mp4"] == [] and kinds["upper.MP4"] == []
    assert kinds["audio_only.mp4"] == ["no_video_stream"] and rows["audio_only.mp4"]["status"] == "UNUSABLE"
    assert kinds["rotated.mp4"] == ["rotated"] and kinds["vfr.mp4"] == ["vfr"] and kinds["short.mp4"] == ["short"]
    assert "damaged" in kinds["corrupt.mp4"] and rows["corrupt.mp4"]["status"] == "warning"
    assert "truncated" in kinds["truncated.mp4"] and rows["truncated.mp4"]["status"] == "warning"
    assert "vfr" not in kinds["truncated.mp4"]  # a cut constant-rate file, not a variable rate
    assert rows["rotated.mp4"]["width"] == 48 and rows["rotated.mp4"]["height"] == 64
    table = capsys.readouterr().out
    assert "audio_only.mp4  UNUSABLE" in table and "no video stream" in table and "clean.mp4" not in table
    assert "9 videos checked: 3 ok, 5 with warnings, 1 unusable" in table


def test_a_clean_folder_passes_even_with_warnings(corpus, tmp_path):
    folder = tmp_path / "ok" / "nested"
    folder.mkdir(parents=True)
    for video in (corpus.clean, corpus.upper_case, corpus.rotated):
        shutil.copy(video, folder / video.name)
    (folder / "notes.txt").write_text("not a video")
    out = tmp_path / "r.json"
    assert check_videos.main([str(tmp_path / "ok"), "--n_jobs", "1", "--output", str(out)]) == 0
    rows = report(out)
    assert sorted(rows) == ["nested/clean.mp4", "nested/rotated.mp4", "nested/upper.MP4"]
    assert rows["nested/rotated.mp4"]["status"] == "warning"


def test_short_is_relative_to_sample_duration(corpus, tmp_path):
    out = tmp_path / "r.json"
    assert check_videos.main([str(corpus.short), "--sample_duration", "4", "--output", str(out)]) == 0
    assert report(out)["short.mp4"]["kinds"] == []


def test_annotation_file_videos_are_resolved_like_the_dataset_and_missing_ones_fail(corpus, tmp_path):
    root = tmp_path / "videos"
    (root / "walk").mkdir(parents=True)
    shutil.copy(corpus.upper_case, root / "walk" / "v1.MP4")
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps({"labels": ["walk"], "database": {
        "v1": {"subset": "training", "annotations": {"label": "walk"}},
        "v2": {"subset": "validation", "annotations": {"label": "walk"}}}}))
    out = tmp_path / "r.json"
    assert check_videos.main([str(annotation), "--video_path", str(root), "--output", str(out)]) == 1
    rows = report(out)
    assert rows["v1"]["kinds"] == [] and rows["v1"]["path"].endswith("v1.MP4")
    assert rows["v2"]["kinds"] == ["missing"] and rows["v2"]["status"] == "UNUSABLE"
    with pytest.raises(UserError, match="--video_path"):
        check_videos.main([str(annotation)])


def test_command_line_exit_codes(corpus, tmp_path):
    def run(*args):
        return run_tool("check_videos", *args)

    bad = run(tmp_path / "nowhere")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    unusable = run(corpus.audio_only, "--output", tmp_path / "r.json")
    assert unusable.returncode == 1 and "no video stream" in unusable.stdout


def test_timestamps_that_cannot_number_frames_are_reported_and_no_frame_is_lost(tmp_path):
    odd = make_timestamp_corpus(tmp_path / "odd")
    folder = tmp_path / "videos"  # the files with a video extension, as a user's folder
    folder.mkdir()
    for name, path in odd.items():
        if path.suffix in (".mp4", ".mkv", ".avi"):
            shutil.copy(path, folder / name)
    out = tmp_path / "r.json"
    assert check_videos.main([str(folder), "--n_jobs", "1", "--output", str(out)]) == 0
    rows = report(out)
    for name in ("dup_pts.mp4", "dup_pts.mkv", "dup_pts_tb30.mp4"):
        if name in rows:  # made by the ffmpeg binary
            row = rows[name]
            assert row["kinds"] == ["vfr", "timestamps"] and row["numbering"] == "packet"
            assert (row["n_decoded"], row["n_frames"], row["unnumbered"]) == (DUP_PTS_FRAMES, DUP_PTS_FRAMES, 0)
            assert (row["duplicate_pts"], row["missing_pts"]) == (1, 0)
            assert f"timestamps: 1 of {DUP_PTS_FRAMES} frames repeat the timestamp of another; frames are numbered " \
                   f"in the order the decoder shows them" in row["problems"]
    avi = rows["b_frames.avi"]
    assert avi["kinds"] == ["timestamps"] and "decoding order" in avi["problems"][0] and avi["n_decoded"] == N_FRAMES
    assert rows["gaps.mp4"]["kinds"] == ["vfr"] and rows["gaps.mp4"]["numbering"] == "timestamps"
    restart = rows["clock_restart.mkv"]
    assert {"vfr", "timestamps"} <= set(restart["kinds"]) and restart["numbering"] == "packet"
    assert any("timestamps: the timestamps jump backwards" in problem for problem in restart["problems"])
    assert (restart["n_decoded"], restart["unnumbered"]) == (N_FRAMES, 0)
    truncated = rows["truncated.mp4"]["kinds"]
    assert "truncated" in truncated and "vfr" not in truncated and "timestamps" not in truncated
    assert rows["truncated.mp4"]["n_decoded"] == 9  # one decoder thread per core or FFmpeg's threads: the same
    # Files the folder scan does not list (no video extension) are checked by the same worker.
    for name, missing in (("missing_pts.ts", 10), ("no_pts.h264", N_FRAMES)):
        details = check_videos.check_video(VideoItem(odd[name], Path(name)), sample_duration=16).details
        assert details["kinds"] == ["timestamps"] and details["missing_pts"] == missing
        assert (details["n_decoded"], details["unnumbered"]) == (N_FRAMES, 0)


@pytest.mark.parametrize("where, message", [
    (lambda t: t, "is a folder; name a file"),
    (lambda t: read_only_folder(t) / "r.json", "cannot write --output"),
    (lambda t: t / "file.txt" / "r.json", "file.txt is a file, not a folder"),
], ids=["folder", "read_only", "under_a_file"])
def test_an_unwritable_output_is_refused_before_any_decoding(corpus, tmp_path, where, message):
    (tmp_path / "file.txt").write_text("")
    result = run_tool("check_videos", corpus.root, "--n_jobs", "1", "--output", where(tmp_path))
    assert result.returncode == 2 and result.stdout == ""  # no video decoded, no table printed
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
