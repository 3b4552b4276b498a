"""Shared by the --predict tests: a small random checkpoint in main.py's format, and an HTML page parser."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import random_model_checkpoint

CLASSES = ["walk", "run", "jump"]
MODEL = ["--model", "resnet", "--model_depth", "10", "--resnet_widen_factor", "0.125"]
TRAIN_FLAGS = [*MODEL, "--sample_size", "32", "--sample_duration", "8", "--inference_stride", "8", "--n_classes", "3"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint in main.py's format (arch, model_kwargs, class_names, options), random weights."""
    return random_model_checkpoint(tmp_path_factory.mktemp("ckpt"), TRAIN_FLAGS, CLASSES)


XSS_NAME = "videos/<img src=x onerror=alert(1)>.mp4"
XSS_LABEL = "</script><script>alert(2)</script>"
EXTERNAL = re.compile(r"^\s*(https?:)?//", re.I)


class Page(HTMLParser):
    """Every tag with its attributes, the text, and the content of script and style elements."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        {"script": self.scripts, "style": self.styles}.get(self._in, self.text).append(data)
