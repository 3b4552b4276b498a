"""Benchmark internals behind ``python -m util_scripts.benchmark`` and ``util_scripts.bench_accuracy``.

parts: the measured parts (model, loader, end to end, inference); data: the photo-like frame dataset, run
options and loader timing; report: the side-by-side table and targets; gpu_decode: the nvjpeg loader variant;
reference_loader: the original-style loader the fast path is compared with; synthetic: small learnable
datasets in the original's layouts (also used by the tests).
"""
