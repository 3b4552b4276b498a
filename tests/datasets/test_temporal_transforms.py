import random

import pytest

from datasets import temporal_transforms as T


def frames(n, start=1):
    return list(range(start, start + n))


def test_loop_padding_matches_original_example_and_keeps_input():
    ix = [1, 2, 3]
    assert T.loop_padding(ix, 8) == [1, 2, 3, 1, 2, 3, 1, 2]
    assert ix == [1, 2, 3]
    assert T.loop_padding(frames(5), 3) == frames(5)
    with pytest.raises(ValueError):
        T.loop_padding([], 4)


def test_center_crop_original_example_and_short_video():
    assert T.center_crop(frames(100), 16) == frames(16, start=43)
    assert T.center_crop(frames(5), 8) == [1, 2, 3, 4, 5, 1, 2, 3]


def test_begin_crop():
    assert T.begin_crop(frames(20), 4) == [1, 2, 3, 4]
    assert T.begin_crop(frames(2), 4) == [1, 2, 1, 2]


def test_random_crop_reaches_every_window_including_the_last():
    rng = random.Random(0)
    starts = {T.random_crop(frames(20), 16, rng)[0] for _ in range(400)}
    assert starts == {1, 2, 3, 4, 5}  # the original never chose 5
    assert {T.random_crop(frames(17), 16, rng)[0] for _ in range(100)} == {1, 2}
    assert T.random_crop(frames(16), 16, rng) == frames(16)


def test_random_crop_short_video_is_loop_padded_and_input_unchanged():
    ix = frames(3)
    assert T.random_crop(ix, 7, random.Random(1)) == [1, 2, 3, 1, 2, 3, 1]
    assert ix == [1, 2, 3]


def test_random_crop_is_reproducible_with_a_seeded_rng():
    a = [T.random_crop(frames(100), 8, random.Random(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


@pytest.mark.parametrize(
    ("n", "starts", "looped"),
    [(100, [1, 43, 85], False), (20, [1, 3, 5], False), (17, [1, 2, 3], True)],
)
def test_even_crop_matches_original_examples(n, starts, looped):
    clips = T.even_crop(frames(n), 16, 3)
    assert [c[0] for c in clips] == starts
    assert all(len(c) == 16 for c in clips)
    assert (clips[-1] != list(range(clips[-1][0], clips[-1][0] + 16))) == looped


def test_even_crop_short_video_gives_one_looped_clip():
    assert T.even_crop(frames(10), 16, 3) == [frames(10) + frames(6)]


def test_even_crop_single_sample_does_not_divide_by_zero():
    assert T.even_crop(frames(100), 16, 1) == [frames(16)]
    assert T.even_crop(frames(4), 16, 1) == [[1, 2, 3, 4] * 4]
    with pytest.raises(ValueError):
        T.even_crop(frames(10), 4, 0)


def test_sliding_window_original_examples():
    clips = T.sliding_window(frames(50), 16, 16)
    assert [c[0] for c in clips] == [1, 17, 33, 49]
    assert clips[-1] == [49, 50] * 8
    assert len(T.sliding_window(frames(48), 16, 16)) == 3
    segments = [T.clip_segment(c) for c in T.sliding_window(frames(33), 16, 16)]
    assert segments == [[1, 17], [17, 33], [33, 34]]


def test_sliding_window_stride_zero_means_clip_length_and_overlap_works():
    assert [c[0] for c in T.sliding_window(frames(32), 16, 0)] == [1, 17]
    assert [c[0] for c in T.sliding_window(frames(24), 16, 8)] == [1, 9, 17]


def test_aligned_last_window_holds_real_frames_only():
    # 50 frames: the tail [49, 50, 49, ...] becomes the window ending at frame 50, overlapping [33..48]
    clips = T.sliding_window(frames(50), 16, 16, align_last=True)
    assert clips == [frames(16), frames(16, 17), frames(16, 33), frames(16, 35)]
    # the demo's 24-frame videos: two windows of real frames, not 16 real + 8 real looped to 16
    assert T.sliding_window(frames(24), 16, 16, align_last=True) == [frames(16), frames(16, 9)]
    # a window that already ends at the last frame is not repeated; full windows are left alone
    assert T.sliding_window(frames(24), 16, 8, align_last=True) == [frames(16), frames(16, 9)]
    assert T.sliding_window(frames(48), 16, 16, align_last=True) == T.sliding_window(frames(48), 16, 16)
    # shorter than one window: nothing real to align to, looped as before
    assert T.sliding_window(frames(10), 16, 16, align_last=True) == [T.loop_padding(frames(10), 16)]
    # through the transform: after --sample_t_stride, as --predict and --inference_align_last_window cut them
    aligned = T.get_temporal_transform("inference", sample_duration=4, sample_t_stride=2, inference_stride=4,
                                       align_last=True)
    assert aligned(list(range(20))) == [[0, 2, 4, 6], [8, 10, 12, 14], [12, 14, 16, 18]]
    padded = T.get_temporal_transform("inference", sample_duration=4, sample_t_stride=2, inference_stride=4)
    assert padded(list(range(20)))[-1] == [16, 18, 16, 18]  # the original's, still the default


def test_subsample():
    assert T.subsample(frames(10), 3) == [1, 4, 7, 10]
    with pytest.raises(ValueError):
        T.subsample(frames(3), 0)


def test_train_transform_with_stride_matches_original_example():
    t = T.get_temporal_transform("train", sample_duration=8, sample_t_stride=2)
    assert not t.multi_clip
    (clip,) = t(frames(100), random.Random(0))
    assert len(clip) == 8 and all(b - a == 2 for a, b in zip(clip, clip[1:]))


def test_center_train_transform():
    t = T.get_temporal_transform("train", sample_duration=16, train_t_crop="center")
    assert t(frames(100)) == [frames(16, start=43)]


def test_val_and_inference_honour_the_temporal_stride_inside_clips():
    val = T.get_temporal_transform("val", sample_duration=4, sample_t_stride=2, n_val_samples=2)
    assert val.multi_clip
    assert val(frames(20)) == [[1, 3, 5, 7], [11, 13, 15, 17]]
    inf = T.get_temporal_transform("inference", sample_duration=4, sample_t_stride=2, inference_stride=4)
    assert inf(frames(16)) == [[1, 3, 5, 7], [9, 11, 13, 15]]


def test_transforms_never_mutate_and_work_on_zero_based_hdf5_indices():
    ix = frames(10, start=0)
    before = list(ix)
    t = T.get_temporal_transform("val", sample_duration=4, n_val_samples=3)
    assert t(ix)[0] == [0, 1, 2, 3]
    assert ix == before


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError):
        T.get_temporal_transform("test", sample_duration=4)
    with pytest.raises(ValueError):
        T.get_temporal_transform("train", sample_duration=4, train_t_crop="edge")
    with pytest.raises(ValueError):
        T.get_temporal_transform("val", sample_duration=4, n_val_samples=0)
    with pytest.raises(ValueError):
        T.get_temporal_transform("train", sample_duration=4)([])


# ---------------------------------------------------------------- segment (TSN/TSM-style) sampling


def test_segment_bounds_cover_the_video_evenly():
    assert T.segment_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert T.segment_bounds(8, 8) == [(k, k + 1) for k in range(8)]
    for n, k in ((100, 8), (33, 5), (7, 7)):
        bounds = T.segment_bounds(n, k)
        assert bounds[0][0] == 0 and bounds[-1][1] == n  # the whole video, no gaps, no overlap
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_segment_centres_are_deterministic_and_evenly_spread():
    val = T.get_temporal_transform("val", sample_duration=4, sampling="segment", n_val_samples=3)
    assert val.multi_clip
    assert val(frames(100)) == [[13, 38, 63, 88]]  # one clip of segment centres (n_val_samples unused)
    assert val(frames(100)) == val(frames(100))
    assert val(frames(8, start=0)) == [[1, 3, 5, 7]]  # 0-based (hdf5, video files) indices too
    clip = T.get_temporal_transform("val", sample_duration=8, sampling="segment")(frames(800))[0]
    gaps = {b - a for a, b in zip(clip, clip[1:])}
    assert gaps == {100}  # evenly spread over the whole video


def test_segment_training_draws_one_frame_in_each_segment_reproducibly():
    t = T.get_temporal_transform("train", sample_duration=4, sampling="segment")
    assert not t.multi_clip
    bounds = [range(1 + lo, 1 + hi) for lo, hi in T.segment_bounds(100, 4)]
    seen = set()
    for seed in range(30):
        (clip,) = t(frames(100), random.Random(seed))
        assert len(clip) == 4 and all(i in seg for i, seg in zip(clip, bounds))
        assert t(frames(100), random.Random(seed)) == [clip]  # seeded: reproducible
        seen.add(tuple(clip))
    assert len(seen) > 20  # random within the segments
    center = T.get_temporal_transform("train", sample_duration=4, sampling="segment", train_t_crop="center")
    assert center(frames(100), random.Random(0)) == [[13, 38, 63, 88]]


def test_segment_sampling_repeats_frames_of_short_videos():
    val = T.get_temporal_transform("val", sample_duration=8, sampling="segment")
    assert val(frames(3)) == [[1, 1, 1, 2, 2, 2, 3, 3]]
    train = T.get_temporal_transform("train", sample_duration=8, sampling="segment")
    assert train(frames(3), random.Random(0)) == [[1, 1, 1, 2, 2, 2, 3, 3]]
    assert train(frames(1), random.Random(0)) == [[1] * 8]


def test_segment_inference_views_are_evenly_offset():
    one = T.get_temporal_transform("inference", sample_duration=4, sampling="segment")
    assert one(frames(100)) == [[13, 38, 63, 88]]
    two = T.get_temporal_transform("inference", sample_duration=4, sampling="segment", inference_n_clips=2)
    assert two(frames(100)) == [[7, 32, 57, 82], [19, 44, 69, 94]]
    with pytest.raises(ValueError):
        T.get_temporal_transform("val", sample_duration=4, sampling="sparse")
