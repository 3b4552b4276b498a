"""Benchmark output: the side-by-side table and the issue's targets checked against one run's numbers.

`summarize_targets(report)` measures every target the run's parts can decide ({name: {value, goal, met}});
`format_targets(report)` is the table gpu_check.sh prints: every target of the issues with its goal, the value
measured and met / NOT met (or not measured, when its part did not run or timed out).
"""

from __future__ import annotations

from dataclasses import dataclass


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
                o, f = parts["model"].get("original", {}), parts["model"][v]
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
                o, f = parts[part].get("original"), parts[part][v]
                note = ""
                if part == "e2e" and o is not None:
                    note = (f"data wait {100 * o['data_wait_share']:.0f}% -> {100 * f['data_wait_share']:.0f}%")
                rows.append(_row(label, f"{v}, {f.get('workers')} workers", o, f, note))
    for v in ("fast", "fast_compile", "fast_video"):
        entry = parts.get("main", {}).get(v)
        if entry is not None:
            wait = entry.get("epoch_data_wait_share")
            note = (f"steady state; first step {_fmt(entry.get('first_step_s'), '.2f')} s "
                    f"({_fmt(entry.get('first_step_without_data_s'), '.2f')} s without data wait); whole epoch "
                    f"{_fmt(entry.get('epoch_clips_per_s'))} clips/s, data wait {_fmt(wait and 100 * wait, '.0f')}%")
            if "compile_s" in entry:
                note += f"; compiled in {entry['compile_s']:.1f} s ({entry.get('compile_cache', '')})"
            rows.append(_row("main.py end to end", f"{v}, {entry.get('workers')} workers", None, entry, note))
    rows += _video_loader_rows(parts.get("video_loader"))
    rows += _deploy_rows(parts.get("deploy", {}))
    for size, entry in parts.get("predict", {}).items():
        rows.append(_row("predict", f"{size}, {entry['video_seconds']:g} s video", None, None,
                         f"{entry['video_s_per_s']:.2f} s of video/s, peak RSS {entry['peak_rss_gb']:.2f} GB"))
    return rows


def _deploy_rows(part: dict) -> list[list[str]]:
    """One row per model, batch and ONNX Runtime variant: eager clips/s -> its clips/s, latencies."""
    rows = []
    for model, batches in part.items():
        for batch, runtimes in batches.items():
            eager = runtimes["eager"]
            for name, entry in runtimes.items():
                note = (f"latency median {entry['latency_ms_median']:.1f} ms, p90 {entry['latency_ms_p90']:.1f} ms"
                        f" (eager {eager['latency_ms_median']:.1f} ms)")
                if name != "eager":
                    rows.append(_row(f"deploy {model}", f"{batch}, {name}", eager, entry, note))
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


@dataclass(frozen=True)
class Target:
    """One goal of the issues: a measured value at least (or, `at_most`, at most) `goal`."""

    key: str
    label: str
    goal: float
    at_most: bool = False

    @property
    def goal_text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.goal:g}"

    def check(self, value: float) -> dict:
        met = value <= self.goal if self.at_most else value >= self.goal
        return {"value": value, "goal": self.goal_text, "met": met}


def issue_targets(workers=(), cameras=()) -> list[Target]:
    """Every target, in the order they are printed (loader targets per worker count and camera-style video source
    of the run)."""
    return [Target("model_fast_vs_fp32", "model only, best fast (compile) vs fp32 eager", 1.8),
            Target("peak_memory_fast_over_fp32", "peak memory, bf16 over fp32", 0.6, at_most=True),
            *[Target(f"loader_per_worker_{w}w", f"loader clips/s per worker, {w} workers, vs original", 2.0)
              for w in workers],
            *([Target("video_prepared_vs_jpg_per_worker", "prepared video copy vs JPEG frames, clips/s per worker",
                      1.0)] if cameras else []),  # the video_loader part's targets: only in a run of that part
            *[Target(f"video_{name}_vs_naive_per_worker", f"{name} mp4 vs naive PyAV reader, per worker", 3.0)
              for name in cameras],
            Target("e2e_over_model_only", "end to end over model only", 0.9),
            Target("e2e_fast_vs_original", "end to end vs original-style", 3.0),
            Target("main_over_model_only", "main.py steady state over model only, eager", 0.9),
            Target("main_video_over_model_only",
                   "main.py --file_type video (prepared mp4 copy) steady state over model only, eager", 0.9),
            Target("main_compile_over_model_only", "main.py --compile steady state over model only, compiled", 0.9),
            Target("main_compile_vs_fp32", "main.py --compile steady state vs fp32 model only", 1.8),
            Target("main_compile_clips_per_s", "main.py --compile steady state, clips/s", 1750),
            Target("first_step_s", "main.py time to first optimiser step, eager, without data wait, s", 5,
                   at_most=True),
            Target("predict_1080p_realtime", "--predict 1080p, seconds of video per second", 20)]


def measured_values(report: dict) -> dict[str, float]:
    """The value of every target this run's parts can decide."""
    parts, out = report["parts"], {}

    def put(name: str, value: float | None) -> None:
        if value is not None:
            out[name] = value

    model = parts.get("model", {})
    original, fast = model.get("original"), model.get("fast")
    if original:
        put("model_fast_vs_fp32", _ratio(_rate(_best_fast(model)), _rate(original)))
        if fast:
            put("peak_memory_fast_over_fp32", _ratio(fast.get("peak_memory_gb"), original.get("peak_memory_gb")))
    for w, variants in parts.get("loader", {}).items():
        put(f"loader_per_worker_{w}w", _ratio(variants["fast"]["clips_per_s_per_worker"],
                                             variants["original"]["clips_per_s_per_worker"]))
    video = parts.get("video_loader")
    if video:
        sources = video["sources"]
        prepared, jpg = sources.get(video["prepared"]), sources.get(video["same_size_jpg"])
        if prepared and jpg:
            put("video_prepared_vs_jpg_per_worker", _ratio(prepared["fast"]["clips_per_cpu_s"],
                                                           jpg["fast"]["clips_per_cpu_s"]))
        for name in _cameras(report):
            put(f"video_{name}_vs_naive_per_worker", sources[name]["fast_over_naive"])
    e2e = parts.get("e2e", {})
    fast_e2e = _best_fast(e2e)
    if fast_e2e is not None:
        put("e2e_fast_vs_original", _ratio(_rate(fast_e2e), _rate(e2e.get("original"))))
        same = model.get("fast_compile" if "fast_compile" in e2e and fast_e2e is e2e["fast_compile"] else "fast")
        put("e2e_over_model_only", _ratio(_rate(fast_e2e), _rate(same)))
    main = parts.get("main", {})
    eager, compiled = main.get("fast"), main.get("fast_compile")
    put("main_over_model_only", _ratio(_rate(eager), _rate(fast)))
    put("main_video_over_model_only", _ratio(_rate(main.get("fast_video")), _rate(fast)))
    put("main_compile_over_model_only", _ratio(_rate(compiled), _rate(model.get("fast_compile"))))
    put("main_compile_vs_fp32", _ratio(_rate(compiled), _rate(original)))
    put("main_compile_clips_per_s", _rate(compiled))
    put("first_step_s", eager.get("first_step_without_data_s") if eager else None)
    put("predict_1080p_realtime", parts.get("predict", {}).get("1080p", {}).get("video_s_per_s"))
    return out


def _cameras(report: dict) -> list[str]:
    """The camera-style video sources of the video_loader part."""
    return [name for name in report["parts"].get("video_loader", {}).get("sources", {}) if name.startswith("camera_")]


def summarize_targets(report: dict) -> dict:
    """The issue's targets that this run's numbers can decide: {name: {value, goal, met}}."""
    known = {t.key: t for t in issue_targets(_workers(report), _cameras(report))}
    return {key: known[key].check(value) for key, value in measured_values(report).items()}


def _workers(report: dict) -> list:
    """The loader's worker counts: the run's settings, else those its loader part measured."""
    return list(report.get("settings", {}).get("workers") or report["parts"].get("loader", {}))


def target_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(target, goal, measured, verdict) of every target, measured or not; the verdict is 'met', 'NOT met' or
    'not measured'."""
    checked = report.get("targets") or summarize_targets(report)
    rows = []
    for target in issue_targets(_workers(report), _cameras(report)):
        check = checked.get(target.key)
        measured = "-" if check is None else f"{check['value']:.2f}"
        verdict = "not measured" if check is None else ("met" if check["met"] else "NOT met")
        rows.append((target.label, target.goal_text, measured, verdict))
    return rows


def format_targets(report: dict) -> str:
    """The targets as an aligned plain-text table."""
    rows = [("target", "goal", "measured", "verdict"), *target_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def merge_reports(reports: list[dict]) -> dict:
    """One report of the parts of several runs (gpu_check.sh runs one part per process): the first run's device
    and settings, every part merged variant by variant (the main part's eager and --compile runs are two), the
    elapsed seconds summed and the targets decided from it all."""
    merged = {k: v for k, v in reports[0].items() if k not in ("parts", "targets")}
    merged["parts"] = {}
    for report in reports:
        for name, part in report["parts"].items():
            merged["parts"].setdefault(name, {}).update(part)
    merged["elapsed_s"] = sum(r.get("elapsed_s", 0) for r in reports)
    merged["targets"] = summarize_targets(merged)
    return merged
