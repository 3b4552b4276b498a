"""--compile (engine.compiled): a compile or compiled call that fails sends the model back to eager, with one
warning line, and the run ends exactly as an eager run does; compiled graphs are cached in a folder a resumed run
finds again.

For the fallback, torch.compile is replaced (in this process only) by a module that runs the model it wraps but
fails at its first call like inductor's assert_size_stride did on an H200: in the forward, or in the backward after
a forward that already updated the BatchNorm statistics. No compiler runs there, so those tests take seconds; the
cache test compiles a bias-free linear layer with inductor (matrix products only, no C++ kernel to build).
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.distributed as tdist
from torch import nn

import main
from checkpoint import load_checkpoint
from engine import compiled
from engine.compiled import CompiledModel, compile_model, first_line
from tests.conftest import DEVICES, check_trained_run, dataset_args, device_args, log_rows, run_main

INDUCTOR_LIKE = ("expected size 128==128, stride 27==1 at dim=1; expected size 3==3, stride 9==1152 at dim=2\n"
                 "Error in op: torch.ops.aten.convolution_backward.default")
WARNING = "warning: --compile failed (AssertionError: expected size 128==128, stride 27==1 at dim=1;"


class _FailInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError(INDUCTOR_LIKE)


class FailingCompiled(nn.Module):
    """Stands in for torch.compile's module (its model is ``_orig_mod`` too). ``fail_in``: 'forward' (the first
    call), 'backward' (of the first call) or 'eval' (the first call in eval mode, as a failing recompile)."""

    def __init__(self, net: nn.Module, fail_in: str):
        super().__init__()
        self._orig_mod, self.fail_in, self.calls = net, fail_in, 0

    def forward(self, x):
        self.calls += 1
        if self.fail_in == "forward" or (self.fail_in == "eval" and not self.training):
            raise AssertionError(INDUCTOR_LIKE)
        out = self._orig_mod(x)
        return _FailInBackward.apply(out) if self.fail_in == "backward" else out


@pytest.fixture
def failing_compile(monkeypatch):
    """torch.compile returns a FailingCompiled; yields the list of those it made."""
    made = []

    def compile_(net, fail_in, **kwargs):
        made.append(FailingCompiled(net, fail_in))
        return made[-1]

    def use(fail_in: str) -> list[FailingCompiled]:
        monkeypatch.setattr(torch, "compile", lambda net, **kwargs: compile_(net, fail_in, **kwargs))
        return made

    return use


def _main_in_process(args: list) -> None:
    """main.main in this process, so torch.compile can be replaced; the logging it set up is undone."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main.main([str(a) for a in args]) == 0
    finally:
        root.handlers[:], root.level = handlers, level


def _run_args(ds, out, *extra):
    return [*dataset_args(ds, out), "--n_epochs", 1, "--checkpoint", 1, "--manual_seed", 3, *extra]


@pytest.fixture(scope="module")
def eager_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("eager")
    _main_in_process(_run_args(tiny_dataset, out))
    return out


@pytest.mark.parametrize("fail_in", ["forward", "backward"])
def test_failed_compile_continues_eagerly_with_the_eager_result(fail_in, failing_compile, eager_run, tiny_dataset,
                                                                 tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(compiled.CACHE_ENV, "restored after the test")  # --compile points it at its cache folder
    made = failing_compile(fail_in)
    _main_in_process(_run_args(tiny_dataset, tmp_path, "--compile"))
    stdout = capsys.readouterr().out
    assert stdout.count(WARNING) == 1 and "Traceback" not in stdout
    assert [m.calls for m in made] == [1]  # compiled once, failed, never called again
    for name in ("train.log", "val.log", "train_batch.log"):
        assert log_rows(tmp_path / name) == log_rows(eager_run / name), name
    ours, eager = load_checkpoint(tmp_path / "save_1.pth"), load_checkpoint(eager_run / "save_1.pth")
    assert ours["state_dict"].keys() == eager["state_dict"].keys()  # no wrapper prefixes
    for key, value in eager["state_dict"].items():  # weights and BatchNorm statistics: the batch counted once
        assert torch.equal(ours["state_dict"][key], value), key
    for index, state in eager["optimizer"]["state"].items():
        assert torch.equal(ours["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])


def _conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.AdaptiveAvgPool3d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def test_a_failing_recompile_in_eval_mode_falls_back(failing_compile, caplog):
    made = failing_compile("eval")
    net = _conv_bn_net()
    model = CompiledModel(net)
    x = torch.randn(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    model(x).sum().backward()  # training: compiled (here: the stand-in) works
    assert model.active and made[0].calls == 1
    with caplog.at_level(logging.WARNING), torch.no_grad():
        scores = model.eval()(x)
    assert not model.active and "--compile failed (AssertionError" in caplog.text
    torch.testing.assert_close(scores, net.eval()(x), rtol=0, atol=0)


def test_ddp_continues_after_a_failed_compiled_backward(failing_compile, tmp_path):
    failing_compile("backward")
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(4, 3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
        y = torch.tensor([0, 1, 2, 0])
        results = []
        for wrap in (lambda net: net, CompiledModel):
            net = _conv_bn_net()
            ddp = nn.parallel.DistributedDataParallel(wrap(net))
            optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
            for _ in range(2):
                optimizer.zero_grad(set_to_none=True)
                try:
                    nn.functional.cross_entropy(ddp(x), y).backward()
                except AssertionError as error:  # what engine.training does with a failed compiled step
                    ddp.module.fall_back(error)
                    nn.functional.cross_entropy(ddp(x), y).backward()
                optimizer.step()
            results.append(net.state_dict())
        for key, value in results[0].items():
            assert torch.equal(results[1][key], value), key
    finally:
        tdist.destroy_process_group()


def test_a_torch_compile_that_refuses_at_once_leaves_the_eager_model(monkeypatch, caplog):
    def refuse(net, **kwargs):
        raise RuntimeError("torch.compile is not supported on Python 3.99+")

    monkeypatch.setattr(torch, "compile", refuse)
    net = _conv_bn_net()
    with caplog.at_level(logging.WARNING):
        assert compile_model(net) is net
    assert "--compile failed (RuntimeError: torch.compile is not supported on Python 3.99+)" in caplog.text


def test_first_line_names_the_backend_error_under_dynamos_wrapper():
    try:
        try:
            raise AssertionError(INDUCTOR_LIKE)
        except AssertionError as inner:
            raise RuntimeError("backend='inductor' raised:\n(see above)") from inner
    except RuntimeError as error:
        assert first_line(error) == "AssertionError: " + INDUCTOR_LIKE.splitlines()[0]


def test_a_second_compile_with_the_same_cache_folder_loads_from_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(compiled, "USER_CACHE_DIR", None)
    monkeypatch.setenv(compiled.CACHE_ENV, "restored after the test")
    folder = compiled.use_compile_cache(tmp_path)
    assert folder == tmp_path.resolve() / "compile_cache" and os.environ[compiled.CACHE_ENV] == str(folder)
    report = compiled.CompileReport(folder)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    found = []
    for _ in range(2):  # the second time as a requeued job: nothing compiled in memory, the cache folder kept
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = CompiledModel(nn.Linear(8, 3, bias=False))  # matrix products only: no C++ kernel to build
        with caplog.at_level(logging.INFO):
            model(x).square().mean().backward()
            found.append(report.log_new())
        assert model.active
    assert found[0]["graph cache misses"] >= 1 and found[0]["graph cache hits"] == 0
    assert found[1]["graph cache hits"] >= 1 and found[1]["graph cache misses"] == 0
    assert found[1]["autograd cache hits"] == 1 and found[1]["autograd cache misses"] == 0
    assert caplog.text.count(f"(cache {folder})") == 2 and "graph cache hits" in caplog.text
    assert any(folder.iterdir())


# On the CPU, dynamo and AOTAutograd only (torch's own debug switch for the backend): a cold inductor build of this
# run takes about 2 minutes on 2 cores. Inductor itself is compiled on the CPU above and in tests/models.
CPU_BACKEND = {"TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager"}


@pytest.mark.compiles
@pytest.mark.parametrize("device", DEVICES)
def test_train_validate_infer_compiled(device, tiny_dataset, tmp_path):
    proc = run_main(device_args(tiny_dataset, tmp_path, device, "--n_epochs", 1, "--checkpoint", 1, "--inference",
                                "--compile"), timeout=600,
                    env={compiled.CACHE_ENV: None, **(CPU_BACKEND if device == "cpu" else {})})
    check_trained_run(tmp_path, tiny_dataset, proc, device, n_epochs=1)
    assert "--compile failed" not in proc.stdout, proc.stdout  # it ran compiled, not eager after a failure
    assert "compiled in " in proc.stdout and str(tmp_path / compiled.CACHE_DIR_NAME) in proc.stdout
