"""Real CIFAR-10 (../shared/data or $CONTRASTLAB_DATA): a short MoCo v2 run must beat its own
untrained encoder on kNN. Skipped, with the reason, when the data is absent."""

import csv

import lightning
import pytest
import torch
from conftest import real_cifar_root

from contrastlab.cli import main
from contrastlab.data.module import ContrastDataModule
from contrastlab.data.readers import read_cifar
from contrastlab.evaluate import knn_of_model
from contrastlab.methods import MoCoV2

ROOT = real_cifar_root()
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        ROOT is None,
        reason="real CIFAR-10 not found under ../shared/data or "
        "$CONTRASTLAB_DATA (cifar-10-batches-py/)",
    ),
]


def test_real_cifar10_structure():
    train, test = read_cifar(ROOT, split="train"), read_cifar(ROOT, split="test")
    assert len(train) == 50_000 and len(test) == 10_000
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert train.images[0, :, 0, 0].tolist() == [59, 62, 63]  # row 0 starts 59 (red plane)
    mean = train.images.float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-4, rtol=0)


# The CIFAR recipe's network (ResNet-18, CIFAR stem) on 2,560 images for 4 epochs (160 steps):
# about 6 minutes on 2 CPU cores. Shorter runs, or the cheaper torchvision stem, stay in
# contrastive learning's early phase, where kNN sits at or below a random encoder's.
MODEL = dict(cifar_stem=True, bn_splits=2, lr=0.03, queue_size=1024)
DATA = dict(train_subset=2560, eval_subset=2000, batch_size=64)


@pytest.mark.slow
def test_short_moco_run_beats_untrained_encoder(tmp_path):
    lightning.seed_everything(0)
    untrained = knn_of_model(MoCoV2(**MODEL), ContrastDataModule(root=str(ROOT), **DATA))
    run_dir = tmp_path / "run"
    overrides = [f"--model.{k}={v}" for k, v in MODEL.items()]
    overrides += [f"--data.{k}={v}" for k, v in DATA.items()]
    main(
        [
            "fit",
            "--config",
            "cifar10/mocov2",
            "--data.root",
            str(ROOT),
            *overrides,
            "--trainer.max_epochs=4",
            "--trainer.check_val_every_n_epoch=4",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run_dir}",
        ]
    )
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    trained = [float(r["knn/top1"]) for r in rows if r.get("knn/top1")][-1]
    print(f"kNN top-1: untrained {untrained:.2f}%, after 160 steps {trained:.2f}%")
    assert trained > untrained + 0.5


def test_moco_step_with_synco_negatives_on_real_images():
    from contrastlab.negatives import SyntheticNegatives

    lightning.seed_everything(0)
    data = ContrastDataModule(root=str(ROOT), train_subset=64, batch_size=32)
    data.setup("fit")
    images, indices, labels = next(iter(data.train_dataloader()))
    model = MoCoV2(
        bn_splits=2,
        queue_size=256,
        synthetic=SyntheticNegatives.synco(n_hard=64),
        synthetic_warmup_epochs=0,
    )
    model.queue.push(
        torch.nn.functional.normalize(torch.randn(256, 128), dim=1), torch.arange(1000, 1256)
    )
    views = model.views(images, indices)
    loss = model.contrastive_loss(views, indices, labels)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert model.backbone.net.conv1.weight.grad.abs().sum() > 0
    assert model.queue.indices[:32].tolist() == indices.tolist()  # keys enqueued, not synthetics
    assert model.queue.pointer.item() == 32


@pytest.mark.parametrize("framework", ["SimCLR", "BYOL", "SimSiam"])
def test_contrastive_crop_step_on_real_images(framework):
    from contrastlab import methods
    from contrastlab.views import ContrastiveCrop

    lightning.seed_everything(0)
    data = ContrastDataModule(root=str(ROOT), train_subset=64, batch_size=32)
    data.setup("fit")
    model = getattr(methods, framework)(crop=ContrastiveCrop(warmup_epochs=0))
    model.crop.reset(len(data.train_set))
    model.localize(data.localization_dataloader())
    model.crop.start_if_due(0)
    boxes = model.crop.boxes
    assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= 1) & (boxes[:, :2] < boxes[:, 2:])).all()
    model.train()
    images, indices, labels = next(iter(data.train_dataloader()))
    loss = model.contrastive_loss(model.views(images, indices), indices, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.net.conv1.weight.grad.abs().sum() > 0
