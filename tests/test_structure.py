"""The layout rules of the tree: few root modules, no import cycles, imports at the top of modules."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("datasets", "models", "engine", "predict", "util_scripts", "benchmarks")
# Imported inside a function on purpose: optional (or, for TensorBoard, heavy) dependencies.
LAZY_ALLOWED = ("simplejpeg", "torchvision", "matplotlib", "onnxruntime", "onnx", "torch.utils.tensorboard", "wandb",
                "mlflow")


def _product_files() -> list[Path]:
    files = sorted(ROOT.glob("*.py"))
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """Project modules a statement imports (``from pkg import mod`` counts as importing pkg.mod)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in known]
    if node.level or not node.module or node.module.split(".")[0] not in known:
        return []
    return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]


def _top_level_graph() -> dict[str, set[str]]:
    files = _product_files()
    names = {_module_name(p) for p in files}
    known = names | {n.split(".")[0] for n in names}
    graph = {}
    for path in files:
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps.update(m for m in _imported_modules(node, known) if m in names)
        graph[_module_name(path)] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _unit(module: str) -> str:
    """A package, or a root module on its own."""
    return module.split(".")[0]


def test_root_holds_at_most_eight_modules():
    assert len(sorted(ROOT.glob("*.py"))) <= 8, sorted(p.name for p in ROOT.glob("*.py"))


def test_no_module_import_cycle():
    assert _cycle(_top_level_graph()) is None


def test_no_package_import_cycle():
    graph: dict[str, set[str]] = {}
    for module, deps in _top_level_graph().items():
        graph.setdefault(_unit(module), set()).update(_unit(d) for d in deps if _unit(d) != _unit(module))
    assert _cycle(graph) is None


def test_project_imports_are_at_module_level():
    inside = []
    for path in _product_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and node.col_offset > 0:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if not all(n.startswith(LAZY_ALLOWED) for n in names):
                    inside.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert inside == []


def test_no_test_module_imports_another():
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1].startswith("test_"):
                offenders.append(f"{path.relative_to(ROOT)} imports {node.module}")
    assert offenders == []


# What needs CUDA itself (nvjpeg, NCCL); every other test body runs on the CPU as well (tests/conftest.py's DEVICES).
CUDA_ONLY_TESTS = {"test_nvjpeg_decode_matches_cpu_decode", "test_sync_batchnorm_in_a_one_process_nccl_group"}


def test_gpu_tests_run_on_the_cpu_too():
    """A test body that only ever runs on a GPU rots unseen where CI has none (a GPU test once called a function a
    refactor had removed): the gpu marker comes from conftest's DEVICES, a CPU and a CUDA variant of the same body,
    or from cuda_only for the few tests above."""
    direct, cuda_only = [], set()
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        direct += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree)
                   if isinstance(node, ast.Attribute) and node.attr == "gpu"]
        cuda_only |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                      and any(isinstance(d, ast.Name) and d.id == "cuda_only" for d in node.decorator_list)}
    assert direct == [] and cuda_only == CUDA_ONLY_TESTS
