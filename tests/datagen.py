"""The tests' synthetic datasets: the generator lives in benchmarks/synthetic.py (bench_accuracy uses it too).

    from tests.datagen import make_frame_dataset
    ds = make_frame_dataset(tmp_path, n_classes=2, videos_per_class=2, n_frames=10, size=(32, 24))
"""

from benchmarks.synthetic import *  # noqa: F403 (re-exported for the tests)
