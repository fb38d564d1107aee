"""Precision chosen by measurement: the choice follows the timer, is cached per device, torch,
network and input size, is said in one line, and an explicit precision always wins."""

import json

import pytest
import torch
import yaml
from conftest import tiny_moco_fit
from torch import nn

import contrastlab.precision as precision
from contrastlab.app.cli import main
from contrastlab.eval.features import extract_features
from contrastlab.methods import MoCoV2
from contrastlab.models.backbones import ResNetBackbone


class FakeClock:
    """A timer that advances by ``bf16`` seconds per reading inside bf16 autocast and by
    ``fp32`` seconds elsewhere: the measured speeds are fixed by the test, not the CPU."""

    def __init__(self, bf16: float, fp32: float) -> None:
        self.now, self.bf16, self.fp32, self.readings = 0.0, bf16, fp32, 0

    def __call__(self) -> float:
        self.readings += 1
        fast = torch.is_autocast_enabled("cpu")
        self.now += self.bf16 if fast else self.fp32
        return self.now


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test starts with an empty cache directory and no decision in memory, and measures
    (the suite's fixed precision, conftest.py, unset)."""
    monkeypatch.delenv(precision.FIXED_ENV)
    monkeypatch.setenv("CONTRASTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "_decided", {})


def tiny_network(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.parametrize(
    ("bf16", "fp32", "expected"), [(1.0, 3.0, "bf16-mixed"), (3.0, 1.0, "32-true")]
)
def test_the_choice_follows_the_timer(bf16, fp32, expected):
    clock = FakeClock(bf16, fp32)
    choice = precision.choose_precision(tiny_network(), 8, 16, "cpu", timer=clock)
    assert choice.precision == expected and not choice.cached
    # every candidate was timed; images/s are inversely proportional to the fake step time
    assert set(choice.rates) == {"bf16-mixed", "32-true"}
    assert choice.rates["bf16-mixed"] / choice.rates["32-true"] == pytest.approx(fp32 / bf16)
    figures = f"{expected}: {choice.rates[expected]:.0f} img/s vs "
    assert choice.message().startswith(f"precision {figures}")
    assert precision.cpu_model() in choice.message()


def test_the_decision_is_cached_and_read_back_without_timing():
    network = tiny_network()
    first = precision.choose_precision(network, 8, 16, "cpu", timer=FakeClock(1.0, 3.0))
    precision._decided.clear()  # a new process: only the file remains
    clock = FakeClock(3.0, 1.0)  # would now choose fp32, if it measured
    again = precision.choose_precision(network, 8, 16, "cpu", timer=clock)
    assert clock.readings == 0 and again.cached
    assert again.precision == first.precision == "bf16-mixed"
    assert "measured earlier, cached in" in again.message()
    entries = json.loads(precision.cache_file().read_text())
    key = precision.cache_key("cpu", network, 16, True)
    assert entries[key]["precision"] == "bf16-mixed" and entries[key]["batch_size"] == 8


def test_the_cache_key_changes_with_network_and_input_size_not_weights():
    key = precision.cache_key
    a, b = ResNetBackbone("resnet18", cifar_stem=True), ResNetBackbone("resnet18", cifar_stem=True)
    assert key("cpu", a, 32, True) == key("cpu", b, 32, True)  # other weights, same network
    assert key("cpu", a, 32, True) != key("cpu", a, 64, True)
    assert key("cpu", a, 32, True) != key("cpu", a, 32, False)
    assert key("cpu", a, 32, True) != key("cpu", ResNetBackbone("resnet18", False), 32, True)
    assert key("cpu", a, 32, True) != key("cpu", ResNetBackbone("resnet34", True), 32, True)
    assert key("cpu", tiny_network(4), 32, True) != key("cpu", tiny_network(5), 32, True)
    assert torch.__version__ in key("cpu", a, 32, True)


def test_an_unreadable_cache_is_measured_again():
    precision.cache_file().parent.mkdir(parents=True, exist_ok=True)
    precision.cache_file().write_text("{not json")
    clock = FakeClock(1.0, 3.0)
    assert precision.choose_precision(tiny_network(), 8, 16, "cpu", timer=clock).precision
    assert clock.readings > 0
    assert json.loads(precision.cache_file().read_text())  # replaced by a valid file


def test_measuring_leaves_the_network_and_global_rng_untouched():
    network = ResNetBackbone("resnet18", cifar_stem=True, bn_splits=2)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    rng = torch.get_rng_state()
    rate = precision.images_per_second(network, "bf16-mixed", 4, 8, "cpu", max_steps=1)
    assert rate > 0
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in network.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in network.parameters())


@pytest.mark.parametrize(("bf16", "fp32"), [(1.0, 3.0), (3.0, 1.0)])
def test_evaluation_uses_the_decision(monkeypatch, bf16, fp32):
    torch.manual_seed(0)
    model = MoCoV2(queue_size=32)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    batches = [(images, torch.arange(16), torch.zeros(16, dtype=torch.long))]
    calls = fake_rates(monkeypatch, {"bf16-mixed": 1 / bf16, "32-true": 1 / fp32})
    decided = precision.choose_precision(model.backbone, 8, model.augment.size, "cpu")
    faster = "bf16-mixed" if bf16 < fp32 else "32-true"  # seconds per reading
    assert len(calls) == 2 * precision.REPEATS and decided.precision == faster
    found, _ = extract_features(model, batches, torch.device("cpu"))
    with torch.no_grad():
        reference = model.features(images)  # outside autocast: fp32
    assert found.dtype == torch.float32
    if decided.precision == "32-true":
        torch.testing.assert_close(found, reference)
    else:
        assert not torch.equal(found, reference)  # autocast really ran in bf16
        error = (found - reference).norm(dim=1) / reference.norm(dim=1)
        assert error.max() < 0.05


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(("amx", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_static_guess_for_several_processes(monkeypatch, no_gpu, amx, expected):
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: amx)
    assert precision.default_precision() == expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_gpu_candidates_and_guess(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert precision.default_precision() == expected
    assert precision.candidates("cuda") == (expected, "32-true")


# ----------------------------------------------------------------------------- through the CLI


def fit_options(run_dir, data_root, *extra):
    return tiny_moco_fit(run_dir, data_root, 1, *extra)


def fake_rates(monkeypatch, rates: dict[str, float]) -> list[tuple]:
    """Measurements return ``rates``; the calls are recorded."""
    calls = []

    def measure(network, name, batch_size, image_size, device, *args, **kwargs):
        calls.append((name, batch_size, image_size, str(device)))
        return rates[name]

    monkeypatch.setattr(precision, "images_per_second", measure)
    return calls


def trainer_precision(run_dir) -> str:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["precision"]


def test_fit_measures_once_says_so_and_trains_in_the_fastest(
    tmp_path, tiny_cifar, monkeypatch, capsys
):
    # rates no run can contradict (a contradicted reading is dropped: see below)
    calls = fake_rates(monkeypatch, {"bf16-mixed": 186e3, "32-true": 87e3})
    main(fit_options(tmp_path / "a", tiny_cifar))
    # a probe of each at batch 8, then the actual per-process batch and view size, the
    # candidates interleaved, twice each
    bf16, fp32 = ("bf16-mixed", 16, 8, "cpu"), ("32-true", 16, 8, "cpu")
    probes = [("bf16-mixed", 8, 8, "cpu"), ("32-true", 8, 8, "cpu")]
    assert calls == probes + [bf16, fp32] * precision.REPEATS
    err = capsys.readouterr().err
    assert "precision bf16-mixed: 186000 img/s vs 32-true: 87000 img/s on " in err
    assert trainer_precision(tmp_path / "a") == "bf16-mixed"
    precision._decided.clear()
    main(fit_options(tmp_path / "b", tiny_cifar))  # the same network: read from the cache
    assert len(calls) == 6
    assert "measured earlier, cached in" in capsys.readouterr().err
    main(fit_options(tmp_path / "c", tiny_cifar, "--model.augment.size", "12"))
    assert len(calls) == 12  # another input size is measured again


def test_a_run_faster_than_its_cached_reading_drops_it(tmp_path, tiny_cifar, monkeypatch, capsys):
    """The trial's case: a reading under load (32-true 19 img/s vs bf16 6) chose fp32; the run
    itself trains faster than 19 img/s, which a quiet measurement could not have allowed."""
    fake_rates(monkeypatch, {"bf16-mixed": 0.6, "32-true": 1.9})
    main(fit_options(tmp_path / "a", tiny_cifar))
    assert trainer_precision(tmp_path / "a") == "32-true"
    assert "measurement was disturbed" in capsys.readouterr().err
    assert precision.read_cache() == {}  # dropped from the file: the next run measures again


def readings(monkeypatch, sequences: dict[str, list[float]]) -> list[str]:
    """Measurements return each precision's ``sequences`` in turn; the order is recorded."""
    order = []

    def measure(network, name, *args, **kwargs):
        order.append(name)
        return sequences[name][sum(1 for n in order if n == name) - 1]

    monkeypatch.setattr(precision, "images_per_second", measure)
    return order


@pytest.mark.parametrize(("second", "trusted"), [(80.0, True), (74.0, False), (100.0, True)])
def test_readings_that_disagree_are_used_but_not_cached(monkeypatch, second, trusted):
    order = readings(monkeypatch, {"bf16-mixed": [100.0, second], "32-true": [50.0, 50.0]})
    network = tiny_network()
    choice = precision.choose_precision(network, 8, 16, "cpu")
    assert order == ["bf16-mixed", "32-true", "bf16-mixed", "32-true"]
    assert choice.precision == "bf16-mixed" and choice.rates["bf16-mixed"] == 100.0  # the best
    assert choice.spread == pytest.approx(1 - second / 100)
    key = precision.cache_key("cpu", network, 16, True)
    assert (key in precision.read_cache()) is trusted
    assert ("not cached" in choice.message()) is not trusted
    precision.choose_precision(network, 8, 16, "cpu")  # this process keeps its decision
    assert len(order) == 4
    precision._decided.clear()
    if trusted:
        assert precision.choose_precision(network, 8, 16, "cpu").cached
    else:  # a new process measures again
        with pytest.raises(IndexError):  # past the recorded readings: it measured
            precision.choose_precision(network, 8, 16, "cpu")


def probe_rates(
    monkeypatch, probe: dict[str, float], full: dict[str, float], probe_batch: int = 8
) -> list[tuple]:
    """Measurements at the probe's batch return ``probe``, at any other ``full``."""
    calls = []

    def measure(network, name, batch_size, *args, **kwargs):
        calls.append((name, batch_size))
        return (probe if batch_size == probe_batch else full)[name]

    monkeypatch.setattr(precision, "images_per_second", measure)
    return calls


@pytest.mark.parametrize(("bf16_probe", "measured"), [(34.0, True), (33.0, False), (10.0, False)])
def test_a_candidate_three_times_slower_in_the_probe_is_not_measured_further(
    monkeypatch, bf16_probe, measured
):
    """fp32's probe runs 100 img/s: bf16 at 34 (2.9x slower) is still timed at the full batch,
    at 33 or 10 (3.03x, 10x) it is left out, said so, and cached so."""
    calls = probe_rates(
        monkeypatch,
        {"bf16-mixed": bf16_probe, "32-true": 100.0},
        {"bf16-mixed": 300.0, "32-true": 200.0},
    )
    network = tiny_network()
    choice = precision.choose_precision(network, 64, 16, "cpu")
    assert calls[:2] == [("bf16-mixed", 8), ("32-true", 8)]
    full = [("bf16-mixed", 64), ("32-true", 64)] if measured else [("32-true", 64)]
    assert calls[2:] == full * precision.REPEATS
    assert choice.precision == ("bf16-mixed" if measured else "32-true")
    if measured:
        assert choice.dropped == {}
    else:
        assert choice.dropped == {"bf16-mixed": pytest.approx(100.0 / bf16_probe)}
        assert f"bf16-mixed {100.0 / bf16_probe:.0f}x slower in a probe" in choice.message()
        precision._decided.clear()
        cached = precision.choose_precision(network, 64, 16, "cpu")
        assert cached.cached and cached.dropped == choice.dropped and len(calls) == 4


def test_no_probe_at_or_below_the_probes_batch(monkeypatch):
    calls = probe_rates(
        monkeypatch, {"bf16-mixed": 1.0, "32-true": 100.0}, {"bf16-mixed": 1.0, "32-true": 100.0}
    )
    precision.choose_precision(tiny_network(), precision.PROBE_BATCH, 16, "cpu")
    assert calls == [("bf16-mixed", 8), ("32-true", 8)] * precision.REPEATS  # measured in full


def test_contradiction_is_a_run_faster_than_its_precisions_reading():
    choice = precision.PrecisionChoice("32-true", {"32-true": 19.0, "bf16-mixed": 6.0}, "cpu")
    assert not precision.contradicts(choice, 20.8)  # within 10% of the reading: timing noise
    assert precision.contradicts(choice, 21.0)
    assert not precision.contradicts(choice, 6.5)  # slower than the reading: consistent


def test_remeasure_variable_ignores_the_cache(monkeypatch):
    network = tiny_network()
    precision.choose_precision(network, 8, 16, "cpu", timer=FakeClock(1.0, 3.0))
    precision._decided.clear()
    monkeypatch.setenv(precision.REMEASURE_ENV, "1")
    again = precision.choose_precision(network, 8, 16, "cpu", timer=FakeClock(3.0, 1.0))
    assert not again.cached and again.precision == "32-true"
    assert precision.REMEASURE_ENV in precision.PrecisionChoice("x", {}, "cpu", True).message()


def test_an_explicit_precision_always_wins(tmp_path, tiny_cifar, monkeypatch, capsys):
    calls = fake_rates(monkeypatch, {"bf16-mixed": 186e3, "32-true": 87e3})
    main(fit_options(tmp_path / "a", tiny_cifar, "--trainer.precision", "32-true"))
    assert calls == [] and trainer_precision(tmp_path / "a") == "32-true"
    assert "img/s" not in capsys.readouterr().err


def test_several_processes_use_the_cache_or_the_static_guess(monkeypatch, capsys):
    from contrastlab.app.fit import expected_processes, measured_precision

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert expected_processes({"devices": "auto"}) == 2
    calls = fake_rates(monkeypatch, {"bf16-mixed": 186.0, "32-true": 87.0})
    model = MoCoV2(queue_size=32)
    data = type("Data", (), {"batch_size": 8})()
    chosen = measured_precision(model, data, {"accelerator": "cpu"})
    assert calls == [] and chosen == precision.default_precision()
    assert "several processes: not measured" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert expected_processes({"devices": 3, "num_nodes": 2, "accelerator": "cpu"}) == 6
    assert measured_precision(model, data, {"accelerator": "cpu"}).precision == "bf16-mixed"
    monkeypatch.setenv("WORLD_SIZE", "2")
    cached = measured_precision(model, data, {"accelerator": "cpu"})
    assert cached.precision == "bf16-mixed" and cached.cached
    assert len(calls) == 2 * precision.REPEATS


def test_the_cache_key_tells_batch_norm_splits_apart():
    one, eight = ResNetBackbone("resnet18", True, 1), ResNetBackbone("resnet18", True, 8)
    assert precision.cache_key("cpu", one, 32, True) != precision.cache_key("cpu", eight, 32, True)


def test_the_probe_batch_keeps_two_images_in_every_split_batchnorm_group(monkeypatch):
    """MoCo's SplitBatchNorm(8) cannot run a batch of 8 (one image per group): its probe runs 16,
    in fact (no fake timer), and a batch of 16 or less is measured in full without a probe."""
    from contrastlab.models.splitbn import SplitBatchNorm

    network = nn.Sequential(nn.Conv2d(3, 4, 3), SplitBatchNorm(4, 8), nn.AdaptiveAvgPool2d(1))
    assert precision.probe_batch(network) == 16 and precision.probe_batch(tiny_network()) == 8
    assert precision.probe_batch(nn.Sequential(SplitBatchNorm(4, 3))) == 9
    choice = precision.choose_precision(network, 32, 4, "cpu")  # real steps: no error
    assert choice.precision in ("32-true", "bf16-mixed")
    calls = probe_rates(
        monkeypatch, {"bf16-mixed": 1.0, "32-true": 100.0}, {"32-true": 100.0}, probe_batch=16
    )
    precision._decided.clear()
    precision.choose_precision(network, 64, 8, "cpu")
    assert calls[:2] == [("bf16-mixed", 16), ("32-true", 16)]


def test_a_fixed_precision_replaces_every_measurement(tmp_path, tiny_cifar, monkeypatch, capsys):
    """``CONTRASTLAB_PRECISION``: no timing, in training and in evaluation loops; the trainer's
    own option still wins; an unknown name is one line naming the variable."""
    calls = fake_rates(monkeypatch, {"bf16-mixed": 186e3, "32-true": 87e3})
    monkeypatch.setenv(precision.FIXED_ENV, "bf16-mixed")
    choice = precision.choose_precision(MoCoV2(queue_size=32).backbone, 64, 32, "cpu")
    assert (choice.precision, choice.rates, calls) == ("bf16-mixed", {}, [])
    assert precision.FIXED_ENV in choice.message() and "img/s" not in choice.message()
    main(fit_options(tmp_path / "a", tiny_cifar))
    assert calls == [] and trainer_precision(tmp_path / "a") == "bf16-mixed"
    assert f"precision bf16-mixed ({precision.FIXED_ENV})" in capsys.readouterr().err
    main(fit_options(tmp_path / "b", tiny_cifar, "--trainer.precision", "32-true"))
    assert calls == [] and trainer_precision(tmp_path / "b") == "32-true"
    monkeypatch.setenv(precision.FIXED_ENV, "fp8")
    with pytest.raises(SystemExit, match=r"CONTRASTLAB_PRECISION='fp8': expected one of 32-true"):
        main(fit_options(tmp_path / "c", tiny_cifar))
    assert not (tmp_path / "c" / "checkpoints").exists()
