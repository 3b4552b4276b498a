"""The test views of inference: how many clips of a video are scored (--inference_n_clips; 0: sliding windows, or
the segment centres with segment sampling) and in which crops (--inference_n_crops, --inference_crop); their
scores are averaged per video.

They are the evaluator's choice, not part of the clip spec (datasets.clip_spec): a model is trained on one kind of
clip and may be tested with any views. A checkpoint's stored options still say which views its run was evaluated
with (main.py --inference), and the accuracy it reported was measured with them; ``--predict`` takes them by
default (`InferenceViews.apply_to`), so it scores videos as that evaluation did. Flags typed on the command line win.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from errors import UserError

log = logging.getLogger(__name__)

CROPS = ("center", "nocrop")
N_CROPS = (1, 3)
# option name -> field name
OPTION_FIELDS = {"inference_n_clips": "n_clips", "inference_n_crops": "n_crops", "inference_crop": "crop"}


@dataclass(frozen=True)
class InferenceViews:
    """The views of one evaluation; the defaults are main.py's (and the original's): sliding windows, one centre
    crop."""

    n_clips: int = 0
    n_crops: int = 1
    crop: str = "center"

    @classmethod
    def of(cls, opt: argparse.Namespace) -> InferenceViews:
        """The views an option namespace asks for."""
        return cls(**{f: getattr(opt, name) for name, f in OPTION_FIELDS.items()})

    @classmethod
    def from_options(cls, options: Mapping, *, source: str) -> InferenceViews:
        """The views of stored options (a checkpoint's); those it lacks take the defaults. A value main.py would
        have refused (a damaged or foreign file) is a UserError naming `source`."""
        views = cls(**{f: options[name] for name, f in OPTION_FIELDS.items() if name in options})
        problem = views._problem()
        if problem:
            raise UserError(f"{source} stores test views main.py refuses: {problem}")
        return views

    def _problem(self) -> str:
        if not isinstance(self.n_clips, int) or isinstance(self.n_clips, bool) or self.n_clips < 0:
            return f"inference_n_clips {self.n_clips!r} (not a whole number >= 0)"
        if self.n_crops not in N_CROPS or isinstance(self.n_crops, bool):
            return f"inference_n_crops {self.n_crops!r} (not 1 or 3)"
        if self.crop not in CROPS:
            return f"inference_crop {self.crop!r} (not {' or '.join(CROPS)})"
        if self.n_crops == 3 and self.crop != "center":
            return "inference_n_crops 3 with inference_crop nocrop"
        return ""

    def describe(self, temporal_sampling: str = "dense") -> str:
        """One phrase, for logs: e.g. '3 evenly spaced clips x 1 center crop'."""
        if temporal_sampling == "segment":
            clips = f"{max(1, self.n_clips)} segment view(s)"
        else:
            clips = f"{self.n_clips} evenly spaced clips" if self.n_clips else "sliding windows"
        crops = "3 crops" if self.n_crops == 3 else f"1 {self.crop} crop"
        return f"{clips} x {crops}"

    def apply_to(self, opt: argparse.Namespace, *, source: str, temporal_sampling: str = "dense") -> InferenceViews:
        """Give `opt` these views, except those typed on the command line (``opt.explicit_flags``), and log the views
        used; returns them. A view of this one that cannot go with a typed one (3 crops and --inference_crop nocrop)
        is not taken."""
        typed = {name for name in OPTION_FIELDS if name in opt.explicit_flags}
        for name, f in OPTION_FIELDS.items():
            if name not in typed:
                setattr(opt, name, getattr(self, f))
        if opt.inference_n_crops == 3 and opt.inference_crop != "center":
            dropped = "inference_crop" if "inference_n_crops" in typed else "inference_n_crops"
            setattr(opt, dropped, getattr(InferenceViews(), OPTION_FIELDS[dropped]))
            log.info("the %s of %s does not go with the typed flags and is not taken", dropped, source)
        used = InferenceViews.of(opt)
        overridden = sorted(n for n in typed if getattr(used, OPTION_FIELDS[n]) != getattr(self, OPTION_FIELDS[n]))
        where = (f"{source}'s, with {', '.join(f'--{n} {getattr(opt, n)}' for n in overridden)} from the command line"
                 if overridden else f"as {source} was evaluated")
        log.info("test views: %s (%s; the flags --inference_n_clips/--inference_n_crops/--inference_crop "
                 "choose others)", used.describe(temporal_sampling), where)
        return used
