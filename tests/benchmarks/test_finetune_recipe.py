"""benchmarks/finetune_recipe.py: its variants and the per-variant spread over seeds (the experiment itself is
too long for the suite; README gives the command and its numbers)."""

from __future__ import annotations

import pytest

from benchmarks.finetune_recipe import VARIANTS, chosen_variants, spread, summarize


def test_spread_of_several_seeds_and_of_one():
    assert spread([0.4, 0.5, 0.6]) == {"mean": 0.5, "std": 0.1, "min": 0.4, "max": 0.6}
    assert spread([0.4]) == {"mean": 0.4, "std": 0.0, "min": 0.4, "max": 0.4}


def test_summary_keeps_every_run_and_the_spread_of_the_final_accuracies():
    runs = {1: {"val_clip_acc": 0.5, "val_video_acc": 0.6}, 2: {"val_clip_acc": 0.7, "val_video_acc": 0.6}}
    summary = summarize(runs)
    assert summary["runs"] == {"1": runs[1], "2": runs[2]}
    assert summary["val_clip_acc"]["mean"] == pytest.approx(0.6) and summary["val_video_acc"]["std"] == 0.0


def test_recipe_plus_adds_layer_decay_and_precise_bn_to_the_recipe():
    assert VARIANTS["recipe+"] == [*VARIANTS["recipe"], "--layer_decay", "0.75", "--precise_bn", "4"]


def test_variants_can_be_chosen_and_added():
    assert list(chosen_variants(None, None)) == list(VARIANTS)
    chosen = chosen_variants(["recipe+", "mine"], [["mine", "--learning_rate 0.003"]])
    assert chosen == {"recipe+": VARIANTS["recipe+"], "mine": ["--learning_rate", "0.003"]}
    with pytest.raises(SystemExit, match="unknown variant"):
        chosen_variants(["nope"], None)
