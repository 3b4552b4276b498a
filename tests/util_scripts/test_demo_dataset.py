"""make_demo_dataset: real videos in the UCF-101 layout that the preparation scripts accept."""

import json
import os

import av
import numpy as np
import pytest

from errors import UserError
from util_scripts import generate_video_jpgs, make_demo_dataset, ucf101_json
from util_scripts.make_demo_dataset import CLASSES, sample_motion


def test_demo_dataset_files_and_splits(tmp_path, capsys):
    root = tmp_path / "demo"
    argv = [str(root), "--n_train_per_class", "2", "--n_test_per_class", "1", "--size", "64x48", "--n_frames", "10"]
    assert make_demo_dataset.main(argv) == 0
    assert "12 training and 6 test videos of 6 classes" in capsys.readouterr().out
    assert sorted(os.listdir(root / "videos")) == sorted(CLASSES)
    for action in CLASSES:
        # Test clips start a new group so that no group is shared between train and test (as in UCF-101).
        names = [f"v_{action}_g01_c01.avi", f"v_{action}_g01_c02.avi", f"v_{action}_g02_c01.avi"]
        assert sorted(os.listdir(root / "videos" / action)) == names
    with av.open(str(root / "videos" / "grow" / "v_grow_g01_c01.avi")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 10 and frames[0].shape == (48, 64, 3)
    split_dir = root / "splits"
    assert (split_dir / "classInd.txt").read_text().splitlines() == [f"{i} {c}" for i, c in enumerate(CLASSES, 1)]
    train = (split_dir / "trainlist01.txt").read_text().splitlines()
    test = (split_dir / "testlist01.txt").read_text().splitlines()
    assert train[:2] == ["move_left/v_move_left_g01_c01.avi 1", "move_left/v_move_left_g01_c02.avi 1"]
    assert test[0] == "move_left/v_move_left_g02_c01.avi" and len(train) == 12 and len(test) == 6

    # The path a user takes: frames, then the annotation JSON.
    assert generate_video_jpgs.main([str(root / "videos"), str(root / "jpg"), "ucf101", "--size", "48"]) == 0
    assert ucf101_json.main([str(split_dir), str(root / "jpg"), str(root)]) == 0
    data = json.loads((root / "ucf101_01.json").read_text())
    assert data["labels"] == list(CLASSES)
    assert data["database"]["v_grow_g02_c01"] == {
        "subset": "validation",
        "annotations": {"label": "grow", "segment": [1, 11]},
    }
    assert sum(e["subset"] == "training" for e in data["database"].values()) == 12


def test_demo_videos_are_deterministic_per_seed(tmp_path):
    def frames(seed):
        rng = np.random.default_rng(seed)
        return make_demo_dataset.render_video("rotate_cw", rng, width=32, height=32, n_frames=4)

    assert np.array_equal(frames(3), frames(3))
    assert not np.array_equal(frames(3), frames(4))


@pytest.mark.parametrize("seed", range(20))
def test_class_is_the_motion_and_shape_stays_in_frame(seed):
    rng = np.random.default_rng(seed)
    width, height, n = 96, 72, 24
    for action in CLASSES:
        m = sample_motion(action, rng, width=width, height=height, n_frames=n)
        dx, dy = m.cx[-1] - m.cx[0], m.cy[-1] - m.cy[0]
        grew, turned = m.radius[-1] / m.radius[0], m.angle[-1] - m.angle[0]
        expected = {
            "move_left": dx < -10 and dy == 0,
            "move_right": dx > 10 and dy == 0,
            "move_up": dy < -10 and dx == 0,
            "move_down": dy > 10 and dx == 0,
            "rotate_cw": turned > 1.0 and dx == dy == 0,
            "grow": grew > 1.4 and dx == dy == 0,
        }[action]
        assert expected, action
        if action != "rotate_cw":
            assert turned == 0
        if action != "grow":
            assert grew == 1
        reach = 1.3 * m.radius  # farthest point of any shape from its centre
        assert (m.cx - reach >= 0).all() and (m.cx + reach <= width).all()
        assert (m.cy - reach >= 0).all() and (m.cy + reach <= height).all()


def test_demo_rejects_bad_sizes(tmp_path):
    for size in ("96", "95x72", "16x16"):
        with pytest.raises(UserError, match="--size"):
            make_demo_dataset.main([str(tmp_path), "--size", size])
