"""The GPU path, checked where it can be on a CPU: the compiled training step, datasets kept on
the accelerator when they fit, and the switch that moves the tests' runs to CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import QUIET_BATCHES_OF_16, TINY_MOCO, device_from_environment, fit_run

from contrastlab.data import module
from contrastlab.methods import MoCoV2
from contrastlab.options import OptionError


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["stats"].values()) if "stats" in counters else 0


@pytest.mark.slow
def test_the_compiled_step_trains_as_the_eager_one(tmp_path: Path, tiny_cifar: Path) -> None:
    """``--model.compile`` with ``aot_eager`` (forward and backward traced by torch.compile,
    no code generated, so it runs without a compiler) gives the eager run's weights, under the
    same checkpoint keys."""
    torch._dynamo.reset()
    options = [*TINY_MOCO, *QUIET_BATCHES_OF_16, "--trainer.max_epochs", "1"]
    eager = fit_run(tmp_path / "eager", tiny_cifar, "cifar10/mocov2", *options)
    assert compiled_graphs() == 0
    compiled = fit_run(
        tmp_path / "compiled",
        tiny_cifar,
        "cifar10/mocov2",
        *options,
        "--model.compile",
        "true",
        "--model.compile_backend",
        "aot_eager",
    )
    assert compiled_graphs() > 0, "nothing was compiled"
    assert compiled["state_dict"].keys() == eager["state_dict"].keys()
    for key, value in eager["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(compiled["state_dict"][key], value, atol=1e-4, rtol=1e-3)
    assert compiled["hyper_parameters"]["compile"] is True


def test_the_step_networks_are_every_backbone_head_and_predictor() -> None:
    model = MoCoV2(bn_splits=1, queue_size=32)
    names = {n for n, m in model.named_children() if any(m is s for s in model.step_networks())}
    assert names == {"backbone", "head", "key_backbone", "key_head"}


def test_an_unknown_compile_backend_is_named() -> None:
    with pytest.raises(OptionError, match="compile_backend = 'fast'.*inductor"):
        MoCoV2(bn_splits=1, queue_size=32, compile=True, compile_backend="fast")


def test_datasets_stay_on_a_gpu_when_a_quarter_of_its_free_memory_holds_them(
    monkeypatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4000, 8000))
    gpu = torch.device("cuda", 0)
    assert module.fits_on_device(1000, gpu)
    assert not module.fits_on_device(1001, gpu)
    assert not module.fits_on_device(1, torch.device("cpu"))


def test_the_test_device_switch_names_what_it_cannot_use() -> None:
    assert device_from_environment(None) == torch.device("cpu")
    assert device_from_environment("cpu") == torch.device("cpu")
    with pytest.raises(pytest.UsageError, match="CONTRASTLAB_TEST_DEVICE='tpu'"):
        device_from_environment("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(pytest.UsageError, match="no CUDA device"):
            device_from_environment("cuda")
