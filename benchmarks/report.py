"""Benchmark output: the side-by-side table and the issue's targets checked against one run's numbers."""

from __future__ import annotations


def _rate(entry: dict | None) -> float | None:
    return entry.get("clips_per_s") if entry else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _best_fast(variants: dict) -> dict | None:
    fast = [variants[v] for v in ("fast", "fast_compile") if v in variants]
    return max(fast, key=lambda e: e["clips_per_s"] or 0.0) if fast else None


def _fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _row(part: str, setting: str, original: dict | None, fast: dict | None, note: str = "") -> list[str]:
    return [part, setting, _fmt(_rate(original)), _fmt(_rate(fast)), _fmt(_ratio(_rate(fast), _rate(original)), ".2f"),
            note]


def table_rows(report: dict) -> list[list[str]]:
    """One row per measurement: part, setting, original clips/s, fast clips/s, ratio, notes."""
    parts, rows = report["parts"], []
    if "model" in parts:
        for v in ("fast", "fast_compile"):
            if v in parts["model"]:
                o, f = parts["model"]["original"], parts["model"][v]
                mem = f"peak GB {_fmt(o.get('peak_memory_gb'), '.2f')} -> {_fmt(f.get('peak_memory_gb'), '.2f')}"
                rows.append(_row("model only", v, o, f, mem))
    for w, variants in parts.get("loader", {}).items():
        o, f = variants["original"], variants["fast"]
        note = (f"per worker {_fmt(o['clips_per_s_per_worker'])} -> {_fmt(f['clips_per_s_per_worker'])}")
        rows.append(_row("loader only", f"{w} workers", o, f, note))
    for w, entry in parts.get("loader_gpu_decode", {}).items():
        rows.append(_row("loader, GPU decode", f"{w} workers", None, entry,
                         f"{_fmt(entry.get('frames_per_s'), '.0f')} frames/s"))
    for part, label in (("e2e", "end to end"), ("inference", "inference")):
        for v in ("fast", "fast_compile"):
            if part in parts and v in parts[part]:
                o, f = parts[part]["original"], parts[part][v]
                note = ""
                if part == "e2e":
                    note = (f"data wait {100 * o['data_wait_share']:.0f}% -> {100 * f['data_wait_share']:.0f}%")
                rows.append(_row(label, f"{v}, {f.get('workers')} workers", o, f, note))
    rows += _video_loader_rows(parts.get("video_loader"))
    for size, entry in parts.get("predict", {}).items():
        rows.append(_row("predict", f"{size}, {entry['video_seconds']:g} s video", None, None,
                         f"{entry['video_s_per_s']:.2f} s of video/s, peak RSS {entry['peak_rss_gb']:.2f} GB"))
    return rows


def _video_loader_rows(part: dict | None) -> list[list[str]]:
    """One row per source of the video_loader part: naive and fast clips per CPU second of one worker, disk."""
    if not part:
        return []
    rows = []
    for name, entry in part["sources"].items():
        naive, fast = entry.get("naive"), entry["fast"]
        wall = f"{_fmt(_rate(fast))}" if naive is None else f"{_fmt(_rate(naive))} -> {_fmt(_rate(fast))}"
        note = f"{entry['disk_bytes'] / 2**20:.1f} MB on disk; wall clock {wall} clips/s"
        if naive is None:
            note += f"; {entry['fast_over_source_naive']:.2f}x the naive reader of {entry['made_from']}"
        rows.append(_row("video loader (naive PyAV -> fast), clips per CPU-s, 1 worker", name, _per_cpu(naive),
                         _per_cpu(fast), note))
    return rows


def _per_cpu(entry: dict | None) -> dict | None:
    return {"clips_per_s": entry["clips_per_cpu_s"]} if entry else None


def format_table(report: dict) -> str:
    """Plain-text table plus the target checks, for the terminal."""
    header = ["part", "setting", "original clips/s", "fast clips/s", "ratio", "notes"]
    rows = [header] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"device: {report['device']}  (torch {report['torch']})"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for name, check in report.get("targets", {}).items():
        lines.append(f"target {name}: {check['value']} (goal {check['goal']}) -> "
                     f"{'met' if check['met'] else 'NOT met'}")
    return "\n".join(lines)


def summarize_targets(report: dict) -> dict:
    """The issue's targets that this run's numbers can decide (values are ratios)."""
    parts, out = report["parts"], {}

    def add(name: str, value: float | None, goal: float, *, at_most: bool = False) -> None:
        if value is not None:
            out[name] = {"value": value, "goal": f"{'<=' if at_most else '>='} {goal}",
                         "met": value <= goal if at_most else value >= goal}

    model = parts.get("model", {})
    if model:
        add("model_fast_vs_fp32", _ratio(_rate(_best_fast(model)), _rate(model["original"])), 1.8)
        mem_o, mem_f = model["original"].get("peak_memory_gb"), model["fast"].get("peak_memory_gb")
        add("peak_memory_fast_over_fp32", _ratio(mem_f, mem_o), 0.6, at_most=True)
    for w, variants in parts.get("loader", {}).items():
        add(f"loader_per_worker_{w}w", _ratio(variants["fast"]["clips_per_s_per_worker"],
                                            variants["original"]["clips_per_s_per_worker"]), 2.0)
    video = parts.get("video_loader")
    if video:
        sources = video["sources"]
        prepared, jpg = sources.get(video["prepared"]), sources.get(video["same_size_jpg"])
        if prepared and jpg:
            add("video_prepared_vs_jpg_per_worker", _ratio(prepared["fast"]["clips_per_cpu_s"],
                                                           jpg["fast"]["clips_per_cpu_s"]), 1.0)
        for name, entry in sources.items():
            if name.startswith("camera_"):
                add(f"video_{name}_vs_naive_per_worker", entry["fast_over_naive"], 3.0)
    e2e = parts.get("e2e", {})
    if e2e:
        fast_e2e = _best_fast(e2e)
        add("e2e_fast_vs_original", _ratio(_rate(fast_e2e), _rate(e2e["original"])), 3.0)
        if model:
            same = model.get("fast_compile" if "fast_compile" in e2e and fast_e2e is e2e["fast_compile"] else "fast")
            add("e2e_over_model_only", _ratio(_rate(fast_e2e), _rate(same)), 0.9)
    return out
