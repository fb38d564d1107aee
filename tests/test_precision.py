"""Where reduced precision is switched on, and that bf16 stays close to fp32."""

import pytest
import torch

import contrastlab.precision as precision
from contrastlab.eval.features import extract_features
from contrastlab.methods import MoCoV2


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(("amx", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_cpu_default_precision_is_bf16_only_with_amx(monkeypatch, no_gpu, amx, expected):
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: amx)
    assert precision.default_precision() == expected
    assert precision.bf16_is_fast("cpu") is amx


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_gpu_default_precision(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert precision.default_precision() == expected


@pytest.mark.parametrize("amx", [True, False])
def test_bf16_autocast_follows_the_cpu(monkeypatch, amx):
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: amx)
    a = torch.randn(4, 4)
    with precision.bf16_autocast("cpu"):
        product = a @ a
    assert product.dtype == (torch.bfloat16 if amx else torch.float32)


def test_bf16_features_are_float32_and_close_to_fp32(monkeypatch):
    torch.manual_seed(0)
    model = MoCoV2(queue_size=32)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    batches = [(images, torch.arange(16), torch.zeros(16, dtype=torch.long))]
    found = {}
    for amx in (False, True):
        monkeypatch.setattr(precision, "cpu_has_amx", lambda amx=amx: amx)
        found[amx], _ = extract_features(model, batches, torch.device("cpu"))
    assert found[True].dtype == torch.float32
    assert not torch.equal(found[True], found[False])  # autocast really ran in bf16
    error = (found[True] - found[False]).norm(dim=1) / found[False].norm(dim=1)
    assert error.max() < 0.05
