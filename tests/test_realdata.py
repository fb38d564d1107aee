"""Real CIFAR-10 (../shared/data or $CONTRASTLAB_DATA): its structure, and steps of every
framework and plug-in on real images (the learning-regression runs are tests/test_learning.py).
Skipped, with the reason, when the data is absent."""

import lightning
import pytest
import torch
from conftest import NEEDS_REAL_CIFAR, real_cifar_root

from contrastlab.data.module import ContrastDataModule
from contrastlab.data.readers import read_cifar
from contrastlab.methods import MoCoV2

ROOT = real_cifar_root()
pytestmark = NEEDS_REAL_CIFAR


def test_real_cifar10_structure():
    train, test = read_cifar(ROOT, split="train"), read_cifar(ROOT, split="test")
    assert len(train) == 50_000 and len(test) == 10_000
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert train.images[0, :, 0, 0].tolist() == [59, 62, 63]  # row 0 starts 59 (red plane)
    mean = train.images.float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-4, rtol=0)


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
