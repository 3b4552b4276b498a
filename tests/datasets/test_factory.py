"""datasets/factory.py: DataLoaders from options, with 0 and 2 workers, sharding, seeding and normalisation; uint8
batches, pinned for CUDA, that prepare_batch turns into normalised clips on the device (CPU and, marked gpu, CUDA)."""

import sys
from types import SimpleNamespace

import pytest
import torch

from datasets import factory as D
from datasets.spatial_transforms import ClipNormalizer
from engine.forward import prepare_batch
from tests.conftest import DEVICES, frame_numbers, make_opt
from tests.datagen import make_frame_dataset

CPU = SimpleNamespace(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), is_main=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_frame_dataset(tmp_path_factory.mktemp("small"), n_classes=3, videos_per_class=3, n_frames=[12, 9, 16],
                              size=(40, 30), content="index", with_test_subset=True)


def train_opt(ds, **kw):
    base = dict(train_crop="random", train_t_crop="random", no_hflip=False, colorjitter=True, batch_size=4)
    return make_opt(ds, **{**base, **kw})


def collect(loader):
    return [(clips.clone(), targets.clone()) for clips, targets in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_batches(small, workers):
    loader, sampler = D.build_train_loader(train_opt(small, n_threads=workers), CPU)
    assert loader.persistent_workers == (workers > 0) and not loader.pin_memory
    batches = collect(loader)
    # 9 clips in batches of 4: a last batch of one clip (BatchNorm cannot train on it) is dropped.
    assert [c.shape[0] for c, _ in batches] == [4, 4]
    clips, targets = batches[0]
    assert clips.dtype == torch.uint8 and clips.shape[1:] == (4, 16, 16, 3)
    assert targets.dtype == torch.long
    labels = sorted(t for _, ts in batches for t in ts.tolist())
    assert len(labels) == 8 and all(labels.count(k) in (2, 3) for k in (0, 1, 2))
    sampler.set_epoch(0)
    assert len(list(sampler)) == 9  # the sampler still yields every clip; only the loader drops the single one


def test_same_clips_whatever_the_number_of_workers_and_new_ones_each_epoch(small):
    loader0, sampler0 = D.build_train_loader(train_opt(small, n_threads=0), CPU)
    loader2, sampler2 = D.build_train_loader(train_opt(small, n_threads=2), CPU)
    epochs0 = [collect(loader0) for _ in range(2)]
    sampler2.set_epoch(0)
    first2 = collect(loader2)
    for (a, ta), (b, tb) in zip(epochs0[0], first2):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(epochs0[0][0][0], epochs0[1][0][0])  # epoch 1 draws new order/crops
    sampler0.set_epoch(1)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(collect(loader0), epochs0[1]))


@pytest.mark.parametrize("workers", [0, 2])
def test_normalising_in_workers_gives_the_same_numbers_as_on_the_device(small, workers):
    opt = train_opt(small, n_threads=workers)
    normalizer = D.build_input_normalizer(opt)
    uint8_batches = collect(D.build_train_loader(opt, CPU)[0])
    opt_w = train_opt(small, n_threads=workers, normalize_in_workers=True)
    float_batches = collect(D.build_train_loader(opt_w, CPU)[0])
    for (u, tu), (f, tf) in zip(uint8_batches, float_batches):
        assert f.dtype == torch.float32 and f.shape == (u.shape[0], 3, 4, 16, 16)
        assert torch.equal(normalizer(u), f) and torch.equal(tu, tf)
        assert normalizer(f) is f


@pytest.mark.parametrize(("n_val_samples", "videos_per_batch"), [(2, 2), (1, 4), (8, 1)])
def test_val_loader_flattens_clips_of_batch_size_over_n_val_samples_videos(small, n_val_samples, videos_per_batch):
    loader = D.build_val_loader(make_opt(small, n_val_samples=n_val_samples, batch_size=4), CPU)
    assert loader.batch_size == videos_per_batch
    clips, targets = next(iter(loader))
    first = loader.dataset[0][0]
    assert clips.shape[1:] == (4, 16, 16, 3) and targets.dtype == torch.long
    assert torch.equal(clips[: len(first)], torch.stack(first))
    total = sum(len(t) for _, t in loader)
    assert total == sum(len(loader.dataset[i][1]) for i in range(len(loader.dataset)))


@pytest.mark.parametrize("workers", [0, 2])
def test_inference_loader_over_the_unlabelled_test_subset(small, workers):
    opt = make_opt(small, inference_subset="test", inference_batch_size=2, inference_stride=4, sample_t_stride=2,
                   n_threads=workers)
    batches = list(D.build_inference_loader(opt, CPU))
    clips, targets = batches[0]
    assert isinstance(targets, list) and all(isinstance(t[0], str) and len(t[1]) == 2 for t in targets)
    first_id = targets[0][0]
    mine = [(c, t) for c, t in zip(clips, targets) if t[0] == first_id]
    assert small.videos[first_id].n_frames == 12  # subsampled 1, 3, ..., 11 -> windows of 4 every 4
    assert [t[1] for _, t in mine] == [[1, 8], [9, 12]]
    assert frame_numbers(mine[0][0]) == [1, 3, 5, 7]  # --sample_t_stride honoured inside inference clips
    assert frame_numbers(mine[1][0]) == [9, 11, 9, 11]


def test_distributed_sharding(small):
    ranks = [SimpleNamespace(rank=r, world_size=2, device=torch.device("cpu")) for r in range(2)]
    train = [D.build_train_loader(make_opt(small, batch_size=2), d) for d in ranks]
    seen = [[i for i, _ in sampler] for _, sampler in train]
    assert len(seen[0]) == len(seen[1]) == 5 and set(seen[0]) | set(seen[1]) == set(range(9))
    val = [D.build_val_loader(make_opt(small, batch_size=2, n_val_samples=1), d) for d in ranks]
    val_ids = [[t.item() for t in targets] for loader in val for _, targets in loader]
    assert sum(len(v) for v in val_ids) == 3  # 3 validation videos, none duplicated
    assert len(val[0].sampler) == 2 and len(val[1].sampler) == 1


def test_input_normalizer_options():
    opt = SimpleNamespace(value_scale=1, mean_dataset="activitynet", no_mean_norm=False, no_std_norm=False,
                          input_type="rgb")
    assert D.build_input_normalizer(opt).mean == pytest.approx([0.4477, 0.4209, 0.3906])
    opt.no_mean_norm, opt.value_scale = True, 255
    n = D.build_input_normalizer(opt)
    assert n.mean == [0, 0, 0] and n.std == pytest.approx([0.2767 * 255, 0.2695 * 255, 0.2714 * 255])
    opt.no_std_norm, opt.input_type = True, "flow"
    n = D.build_input_normalizer(opt)
    assert isinstance(n, ClipNormalizer) and n.mean == [0, 0] and n.std == [1, 1] and n.value_scale == 255


def test_class_names_and_cuda_pinning(small, tmp_path):
    assert D.get_class_names(make_opt(small)) == ["class_0", "class_1", "class_2"]
    anet = make_frame_dataset(tmp_path, dataset="activitynet", n_frames=8)
    assert D.get_class_names(make_opt(anet, dataset="activitynet")) == ["class_0", "class_1"]
    cuda = SimpleNamespace(rank=0, world_size=1, device=torch.device("cuda", 0))
    assert D.build_val_loader(make_opt(small), cuda).pin_memory


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_batches_pinned_for_cuda_become_normalised_clips_on_the_device(small, device):
    opt = make_opt(small, n_threads=1)
    loader, sampler = D.build_train_loader(opt, SimpleNamespace(rank=0, world_size=1, device=torch.device(device)))
    sampler.set_epoch(1)
    clips, targets = next(iter(loader))
    assert clips.dtype == torch.uint8 and clips.shape == (4, 4, 16, 16, 3)
    assert clips.is_pinned() == targets.is_pinned() == (device == "cuda")
    normalizer = D.build_input_normalizer(opt)
    on_device, on_targets = prepare_batch(clips, targets, torch.device(device), normalizer)
    assert on_device.device.type == on_targets.device.type == device
    assert on_device.dtype == torch.float32 and on_device.shape == (4, 3, 4, 16, 16)
    torch.testing.assert_close(on_device.cpu(), normalizer(clips), atol=1e-5, rtol=0)
    del loader  # stops its persistent worker


def test_loaders_do_not_import_torchvision():
    assert "torchvision" not in sys.modules


def test_bad_frames_are_counted_across_worker_processes(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=2, videos_per_class=2, n_frames=6, content="index")
    for vid in ds.ids("training"):
        (ds.videos[vid].path / "image_00002.jpg").write_bytes(b"garbage")
    loader, _ = D.build_train_loader(make_opt(ds, n_threads=2, sample_duration=6, batch_size=2), CPU)
    for clips, _ in loader:
        assert clips.shape == (2, 6, 16, 16, 3)
    assert D.data_problems(loader).counts()["corrupt_frames"] == 4


def test_video_file_loaders_with_workers(tmp_path):
    ds = make_frame_dataset(tmp_path, n_classes=2, videos_per_class=2, n_frames=[14, 20], file_type="video",
                            content="index")
    loader, _ = D.build_train_loader(train_opt(ds, file_type="video", n_threads=2, sample_t_stride=2), CPU)
    for clips, targets in loader:
        assert clips.shape[1:] == (4, 16, 16, 3) and clips.dtype == torch.uint8 and targets.dtype == torch.long
    val = D.build_val_loader(make_opt(ds, file_type="video", n_threads=2, sample_t_stride=2), CPU)
    clips, targets = next(iter(val))
    assert frame_numbers(clips[0]) == [1, 3, 5, 7] and targets.tolist() == [0, 0, 1, 1]  # 2 videos x 2 clips
    assert D.data_problems(val).counts() == {"missing_frames": 0, "corrupt_frames": 0, "unreadable_videos": 0}


def test_seed_worker_limits_torch_to_one_thread():
    before = torch.get_num_threads()
    try:
        D.seed_worker(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
