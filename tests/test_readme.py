"""README's install and test commands work from a fresh shell: the test block activates the environment that
Installation makes (the system Python has no torch), and CI runs the same test command in the same way."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def _first_code_block(section: str) -> list[str]:
    """The commands of the first ```bash block under the heading `section` (comments and blank lines dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text[text.index(f"\n## {section}\n"):]
    block = re.search(r"```bash\n(.*?)```", body, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_the_test_command_runs_in_the_installed_environment():
    install, tests = _first_code_block("Installation"), _first_code_block("Tests")
    assert install[0] == "python3 -m venv .venv && . .venv/bin/activate"
    assert tests == [". .venv/bin/activate", "python -m pytest -q tests"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci.index(". .venv/bin/activate") < ci.index("python -m pytest -q tests")
