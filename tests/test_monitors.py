"""The label-free monitor: RankMe and the normalised features' spread, against independent
computations and the cases whose answer is known; the callback on a stand-in module."""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from contrastlab.eval.monitors import RankMeMonitor
from contrastlab.eval.spectrum import normalized_std, rankme


def rankme_by_hand(x: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe from the Gram matrix's eigenvalues (singular values are their square roots)."""
    eigen = torch.linalg.eigvalsh(x.double().T @ x.double()).clamp(min=0)
    singular = eigen.sqrt()
    p = singular / singular.sum() + eps
    return math.exp(-sum(float(v) * math.log(float(v)) for v in p))


def test_rankme_of_two_known_singular_values():
    """Singular values 3 and 1: p = (3/4, 1/4), RankMe = exp(H) = 4 / 3^(3/4) = 1.7548."""
    x = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert rankme(x, eps=0.0) == pytest.approx(4 / 3**0.75, rel=1e-9)


def test_rankme_matches_the_gram_matrix_reference():
    torch.manual_seed(0)
    x = torch.randn(300, 40) @ torch.diag(torch.linspace(0.1, 3.0, 40))
    assert rankme(x) == pytest.approx(rankme_by_hand(x), rel=1e-6)


def test_a_constant_encoder_has_rank_one_and_no_spread():
    x = torch.randn(1, 64).expand(512, 64)
    assert rankme(x) == pytest.approx(1.0, abs=1e-3)
    assert normalized_std(x) == pytest.approx(0.0, abs=1e-7)


def test_gaussian_embeddings_use_every_dimension():
    torch.manual_seed(0)
    d = 64
    x = torch.randn(8192, d)
    assert d * 0.95 < rankme(x) <= d
    assert normalized_std(x) * math.sqrt(d) == pytest.approx(1.0, abs=0.02)
    # half the dimensions dead: the effective rank halves
    assert d / 2 * 0.95 < rankme(torch.cat([x[:, : d // 2], torch.zeros(8192, d // 2)], 1)) <= d / 2


class StandIn(nn.Module):
    """What the monitor asks of a module: features of a sample batch, precision, log."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.value = features
        self.logged: dict[str, float] = {}
        self.hparams = {"knn_features": "backbone"}

    def sample_features(self, batch) -> torch.Tensor:
        return self.value[batch]

    def precision_context(self):
        return nullcontext()

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged[name] = value


def stand_in_trainer(images: int) -> SimpleNamespace:
    batches = [torch.arange(i, min(i + 100, images)) for i in range(0, images, 100)]
    data = SimpleNamespace(sample_dataloader=lambda count: batches)
    logger = SimpleNamespace(rows=[])
    logger.log_metrics = lambda metrics, step: logger.rows.append((step, dict(metrics)))
    return SimpleNamespace(
        datamodule=data,
        global_step=0,
        global_rank=0,
        current_epoch=0,
        loggers=[logger],
        progress_bar_callback=None,
        callbacks=[],
        check_val_every_n_epoch=1,
        max_epochs=10,
        sanity_checking=False,
    )


def test_the_monitor_logs_the_untrained_point_and_warns_on_collapse(capsys):
    torch.manual_seed(0)
    trainer = stand_in_trainer(400)
    module = StandIn(torch.randn(400, 32))
    monitor = RankMeMonitor(images=400)
    monitor.on_train_start(trainer, module)
    step, first = trainer.loggers[0].rows[0]
    assert step == 0 and first["epoch"] == -1 and first["rankme/images"] == 400
    assert first["rankme/value"] == pytest.approx(rankme_by_hand(module.value), rel=1e-6)
    assert "RankMe of the untrained encoder" in capsys.readouterr().out

    module.value = torch.randn(1, 32).expand(400, 32).clone()  # every image one direction
    trainer.current_epoch, trainer.global_step = 3, 40
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.on_train_epoch_end(trainer, module)
        monitor.on_train_epoch_end(trainer, module)  # warned once
    assert module.logged["rankme/value"] == pytest.approx(1.0, abs=1e-3)
    assert module.logged["rankme/feature_std"] == pytest.approx(0.0, abs=1e-6)
    assert [str(w.message).startswith("the features are collapsing") for w in caught] == [True]
    assert trainer.loggers[0].rows[-1][1]["epoch"] == 3


def test_the_untrained_point_survives_a_checkpoint():
    trainer = stand_in_trainer(200)
    monitor = RankMeMonitor(images=200)
    monitor.on_train_start(trainer, StandIn(torch.randn(200, 8)))
    checkpoint: dict = {}
    monitor.on_save_checkpoint(trainer, None, checkpoint)
    resumed = RankMeMonitor(images=200)
    resumed.on_load_checkpoint(trainer, None, checkpoint)
    assert resumed.untrained == monitor.untrained
    trainer.global_step = 5
    resumed.on_train_start(trainer, StandIn(torch.randn(200, 8)))  # not measured again
    assert len(trainer.loggers[0].rows) == 1


def test_a_labelled_run_measures_the_knn_banks_features_at_the_knn_cadence():
    """With labels the monitor makes no pass of its own: it takes the kNN monitor's bank
    features (the training split's backbone features); without, it measures its own sample
    every check_val_every_n_epoch epochs and after the last."""
    from contrastlab.eval.monitors import KnnMonitor

    torch.manual_seed(0)
    trainer = stand_in_trainer(300)
    knn, monitor = KnnMonitor(), RankMeMonitor(images=200)
    trainer.callbacks = [knn, monitor]
    passes = []
    trainer.datamodule.sample_dataloader = lambda count: passes.append(count) or []
    bank = torch.randn(500, 16)
    knn.bank_features = bank
    trainer.current_epoch = 4
    monitor.on_validation_epoch_end(trainer, StandIn(torch.zeros(1, 16)))
    values = trainer.loggers[0].rows[-1][1]
    rows = torch.randperm(500, generator=torch.Generator().manual_seed(17))[:200]
    assert values["rankme/images"] == 200 and values["epoch"] == 4
    assert values["rankme/value"] == pytest.approx(rankme_by_hand(bank[rows]), rel=1e-6)
    assert knn.bank_features is None and passes == []  # taken, released, no pass
    monitor.on_train_epoch_end(trainer, StandIn(torch.zeros(1, 16)))  # measured this epoch
    assert len(trainer.loggers[0].rows) == 1

    unlabelled = stand_in_trainer(300)
    unlabelled.check_val_every_n_epoch, unlabelled.max_epochs = 5, 12
    own = RankMeMonitor(images=300)
    module = StandIn(torch.randn(300, 16))
    for epoch in range(12):
        unlabelled.current_epoch = epoch
        own.on_train_epoch_end(unlabelled, module)
    assert [row["epoch"] for _, row in unlabelled.loggers[0].rows] == [4, 9, 11]


@pytest.mark.parametrize(("every", "passes"), [(5, [2]), (3, []), (1, [])])
def test_the_knn_monitor_measures_after_the_last_epoch_when_no_validation_did(every, passes):
    """A run shorter than the validation interval (or not ending on it) still ends with a
    trained figure; an epoch that validated is not measured twice."""
    from contrastlab.eval.monitors import KnnMonitor

    trainer = stand_in_trainer(10)
    trainer.check_val_every_n_epoch, trainer.max_epochs, trainer.should_stop = every, 3, False
    knn, measured, module = KnnMonitor(), [], StandIn(torch.zeros(1, 4))
    knn.measure = lambda trainer, pl_module: measured.append(trainer.current_epoch) or 42.0
    for epoch in range(3):
        trainer.current_epoch, trainer.global_step = epoch, 4 * (epoch + 1)
        knn.on_train_epoch_end(trainer, module)
    assert measured == passes
    if passes:
        assert module.logged["knn/top1"] == 42.0
        assert trainer.loggers[0].rows == [(11, {"knn/top1": 42.0, "epoch": 2})]


@pytest.mark.parametrize(("steps", "interval", "expected"), [(4, 8, 4), (20, 8, 8), (8, 8, 8)])
def test_a_short_epoch_logs_its_step_curves_once_at_least(steps, interval, expected):
    from contrastlab.app.fit import LogEveryEpoch

    trainer = SimpleNamespace(num_training_batches=steps, log_every_n_steps=interval)
    LogEveryEpoch().on_train_start(trainer, None)
    assert trainer.log_every_n_steps == expected
