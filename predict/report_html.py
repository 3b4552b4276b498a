"""predictions.html: one self-contained page of a `--predict` run, readable for a thousand videos.

One row per video: a few thumbnails (small JPEG data URIs taken from frames during the decoding pass), the
segment timeline of top-1 labels coloured by class (colours and overlaps as in the annotated videos' strip: the
earlier of two overlapping segments on top; segments of a looped clip hatched), bars of the
video's top-k scores, the problems met while decoding and a link to the annotated video when one was made.
Rows can be filtered and sorted in the page (a small inline script; no server).

Nothing is loaded from elsewhere: no external scripts, styles, fonts or images, and a Content-Security-Policy
that allows only the page's own script (by hash) and data: images. Every name and label read from files is
escaped by Jinja2's autoescaping; the script reads only data-* attributes, so no data is embedded in code.

    thumbs = ThumbnailSampler(meta.n_frames)
    for number, seconds, frame in stream_frames(path, meta):
        thumbs.add(number, seconds, frame)
    entry = VideoEntry(video_id, duration, top, segments, thumbnails=thumbs.images, problems=[...])
    write_report(out_dir / "predictions.html", [entry, ...], title=...)
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment
from markupsafe import Markup
from PIL import Image

from datasets.video_files import upright_image
from predict.annotate_video import ClassColors
from utils import atomic_file

THUMBNAILS = 3
THUMB_HEIGHT = 72
MAX_TOPK_BARS = 5

SCRIPT = """
(function () {
  document.documentElement.className = 'js';  // the filter and sort controls work: show them
  var body = document.getElementById('rows');
  var rows = Array.prototype.slice.call(body.children);
  var filter = document.getElementById('filter');
  var sort = document.getElementById('sort');
  var count = document.getElementById('shown');
  function apply() {
    var q = filter.value.toLowerCase();
    var key = sort.value;
    var numeric = key !== 'name' && key !== 'label';
    var sign = key === 'order' ? -1 : 1;  // numbers: largest first, except the input order
    var sorted = rows.slice().sort(function (a, b) {
      var x = a.dataset[key], y = b.dataset[key];
      if (numeric) { return sign * (parseFloat(y) - parseFloat(x)) || a.dataset.order - b.dataset.order; }
      return x < y ? -1 : x > y ? 1 : a.dataset.order - b.dataset.order;
    });
    var shown = 0;
    sorted.forEach(function (row) {
      var visible = !q || row.dataset.search.indexOf(q) >= 0;
      row.hidden = !visible;
      shown += visible ? 1 : 0;
      body.appendChild(row);
    });
    count.textContent = shown;
  }
  filter.addEventListener('input', apply);
  sort.addEventListener('change', apply);
})();
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; \
script-src '{{ script_hash }}'; media-src 'self'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 13px/1.35 system-ui, sans-serif; margin: 12px; color: #222; background: #fafafa; }
h1 { font-size: 18px; margin: 0 0 4px; }
.meta { color: #555; margin-bottom: 8px; }
.partial { color: #a00; font-weight: bold; }
.controls { display: none; }
html.js .controls { display: block; position: sticky; top: 0; background: #fafafa; padding: 6px 0; z-index: 2; }
.controls input { width: 24em; }
.legend span { display: inline-block; margin: 0 10px 4px 0; white-space: nowrap; }
.sw { display: inline-block; width: 10px; height: 10px; margin-right: 3px; vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 6px; vertical-align: top; text-align: left; }
th { background: #eee; }
td.name { word-break: break-all; }
.thumbs { white-space: nowrap; overflow: hidden; }
.thumbs img { height: {{ thumb_height }}px; max-width: {{ thumb_height * 16 // 9 }}px; object-fit: cover; }
.thumbs img + img { margin-left: 2px; }
.tl { position: relative; height: 16px; background: #3c3c3c; margin-top: 3px; }
.tl span { position: absolute; top: 0; bottom: 0; }
.tl span.looped, .sw.looped { background-image: repeating-linear-gradient(135deg, rgba(255,255,255,.65) 0 3px, \
transparent 3px 7px); }
.bar { display: flex; align-items: center; gap: 4px; }
.bar .fill { height: 10px; min-width: 1px; }
.bar .lab { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.problems { color: #a00; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<div class="meta">{{ videos | length }} video(s){% if checkpoint %} &middot; checkpoint {{ checkpoint }}{% endif %}
{% if n_problems %} &middot; <span class="problems">{{ n_problems }} with problems</span>{% endif %}
{% if partial %} &middot; <span class="partial">partial: {{ partial }}</span>{% endif %}</div>
<div class="legend">{% for label, color in legend %}<span><i class="sw" style="background:{{ color }}"></i>{{ label }}\
</span>{% endfor %}
{% if any_looped %}<span><i class="sw looped" style="background-color:#888"></i>hatched: the video is shorter than one \
clip, whose frames were looped to fill it</span>{% endif %}</div>
<div class="controls">
<input id="filter" type="search" placeholder="filter by name or label">
sort by <select id="sort">
<option value="order">input order</option><option value="name">name</option><option value="label">top-1 label</option>
<option value="score">top-1 score</option><option value="duration">duration</option>
<option value="problems">problems</option></select>
&middot; <span id="shown">{{ videos | length }}</span> shown
</div>
<table>
<colgroup><col style="width:22%"><col style="width:{{ thumb_col }}px"><col><col style="width:22%"></colgroup>
<thead><tr><th>video</th><th>frames</th><th>timeline (top-1 per segment)</th><th>top {{ topk }}</th></tr></thead>
<tbody id="rows">
{% for v in videos %}
<tr data-order="{{ loop.index0 }}" data-name="{{ v.name | lower }}" data-label="{{ v.top1_label | lower }}" \
data-score="{{ '%.6f' % v.top1_score }}" data-duration="{{ '%.3f' % v.duration }}" \
data-problems="{{ v.problems | length }}" data-search="{{ v.search }}">
<td class="name">{{ v.name }}<br><small>{{ '%.2f' % v.duration }} s</small>
{% if v.annotated %}<br><a href="{{ v.annotated }}">annotated video</a>{% endif %}
{% if v.problems %}<div class="problems">{% for p in v.problems %}{{ p }}<br>{% endfor %}</div>{% endif %}</td>
<td class="thumbs">{% for t in v.thumbnails %}<img alt="frame at {{ '%.2f' % t.seconds }} s" \
title="{{ '%.2f' % t.seconds }} s" src="{{ t.uri }}">{% endfor %}</td>
<td><div class="tl">{% for s in v.timeline | reverse %}<span{% if s.looped %} class="looped"{% endif %} \
style="left:{{ s.left }}%;width:{{ s.width }}%;background-color:{{ s.color }}" title="{{ s.title }}"></span>\
{% endfor %}</div></td>
<td>{% for t in v.top %}<div class="bar"><span class="fill" style="width:{{ t.percent }}%;background:{{ t.color }}">\
</span><span class="lab">{{ t.label }} {{ '%.3f' % t.score }}</span></div>{% endfor %}</td>
</tr>
{% endfor %}
</tbody>
</table>
<script>{{ script }}</script>
</body>
</html>
"""


@dataclass(frozen=True)
class Thumbnail:
    seconds: float
    uri: str  # data:image/jpeg;base64,...


def jpeg_data_uri(image, height: int = THUMB_HEIGHT, quality: int = 70) -> str:
    """A small JPEG data URI of a PIL image (aspect ratio kept)."""
    width = max(1, round(image.width * height / image.height))
    small = image.convert("RGB").resize((width, height))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ThumbnailSampler:
    """Takes `count` evenly spaced frames of a video as thumbnails while its frames go by once.

    A wanted frame lost to damage is replaced by the next frame that arrives.
    """

    def __init__(self, n_frames: int, count: int = THUMBNAILS, height: int = THUMB_HEIGHT):
        self.targets = sorted({min(max(n_frames - 1, 0), int((k + 0.5) * n_frames / count)) for k in range(count)})
        self.height = height
        self.images: list[Thumbnail] = []
        self._next = 0  # index of the next target frame

    def add(self, number: int, seconds: float, frame) -> None:
        """Offer a decoded frame (av.VideoFrame or upright RGB array)."""
        if self._next >= len(self.targets) or number < self.targets[self._next]:
            return
        while self._next < len(self.targets) and self.targets[self._next] <= number:
            self._next += 1  # one frame stands for every target it reached (frames before it were lost)

        if hasattr(frame, "to_ndarray"):
            image = upright_image(frame, (1, self.height))
        else:
            image = Image.fromarray(frame)
        self.images.append(Thumbnail(float(seconds), jpeg_data_uri(image, self.height)))


@dataclass
class VideoEntry:
    """One video of the page: its id, duration, video top-k, segments ({"segment": [s, e], "result": top}),
    thumbnails, decoding problems (one line each) and the annotated video's link relative to the page."""

    name: str
    duration: float
    top: list[dict]
    segments: list[dict] = field(default_factory=list)
    thumbnails: list[Thumbnail] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    annotated: str | None = None


def _row(entry: VideoEntry, topk: int, colors: ClassColors) -> dict:
    top = entry.top[:topk]
    best = max((t["score"] for t in top), default=0.0) or 1.0
    timeline = []
    for seg in entry.segments:
        start, end = seg["segment"]
        if not seg["result"] or entry.duration <= 0:
            continue
        label, score = seg["result"][0]["label"], seg["result"][0]["score"]
        share = float(seg.get("real_share", 1.0))  # entries of earlier versions do not say: taken as real
        looped = f" (looped: {share:.0%} of the clip's frames are real)" if share < 1 else ""
        timeline.append({"left": f"{100 * start / entry.duration:.3f}",
                         "width": f"{100 * max(end - start, 0) / entry.duration:.3f}", "looped": bool(looped),
                         "color": colors.hex(label), "title": f"{start:.2f}-{end:.2f} s: {label} {score:.3f}{looped}"})
    labels = " ".join(t["label"] for t in top)
    return {"name": entry.name, "duration": entry.duration, "thumbnails": entry.thumbnails,
            "problems": entry.problems, "annotated": entry.annotated, "timeline": timeline,
            "top1_label": top[0]["label"] if top else "", "top1_score": top[0]["score"] if top else 0.0,
            "top": [{"label": t["label"], "score": t["score"], "color": colors.hex(t["label"]),
                     "percent": f"{45 * t['score'] / best:.1f}"} for t in top],
            "search": f"{entry.name} {labels}".lower()}


def render_report(entries: Sequence[VideoEntry], *, title: str = "Predictions", checkpoint: str = "",
                  topk: int = MAX_TOPK_BARS, partial: str = "", class_names: Sequence[str] = ()) -> str:
    """The page's HTML. `partial`: why the results are incomplete ('' when they are not); `class_names`: the
    model's classes in order (their colours, as in the annotated videos)."""
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    colors = ClassColors(class_names)
    rows = [_row(e, topk, colors) for e in entries]
    legend = sorted({r["top1_label"] for r in rows if r["top1_label"]}
                    | {s["result"][0]["label"] for e in entries for s in e.segments if s["result"]})
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    return env.from_string(TEMPLATE).render(
        title=title, checkpoint=checkpoint, videos=rows, topk=topk, partial=partial,
        any_looped=any(s["looped"] for r in rows for s in r["timeline"]),
        n_problems=sum(1 for e in entries if e.problems), legend=[(label, colors.hex(label)) for label in legend],
        thumb_height=THUMB_HEIGHT, thumb_col=THUMBNAILS * (THUMB_HEIGHT * 16 // 9 + 4) + 16,
        script=_script_markup(), script_hash=f"sha256-{digest}")


def _script_markup():
    return Markup(SCRIPT)  # a constant of this module, not data: inserted as is so its hash matches the policy


def write_report(path: Path, entries: Sequence[VideoEntry], **kwargs) -> Path:
    """Render the page and write it atomically."""
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(render_report(entries, **kwargs), encoding="utf-8")
    return Path(path)


def entries_from_predictions(predictions: dict, *, thumbnails: dict | None = None, problems: dict | None = None,
                             annotated: dict | None = None) -> list[VideoEntry]:
    """Page entries of a predictions dict (predict.runner's {"results": {video_id: {...}}}) and what the decoding
    pass collected per video id."""
    thumbnails, problems, annotated = thumbnails or {}, problems or {}, annotated or {}
    return [VideoEntry(vid, float(r.get("duration", 0.0)), list(r.get("result", [])), list(r.get("segments", [])),
                       list(thumbnails.get(vid, [])), list(problems.get(vid, [])), annotated.get(vid))
            for vid, r in predictions["results"].items()]
