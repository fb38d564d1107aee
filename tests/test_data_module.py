import pytest
import torch
from torchvision.io import write_png

from contrastlab.app.cli import main
from contrastlab.data.module import ContrastDataModule
from contrastlab.data.readers import DatasetError
from contrastlab.data.sampling import GlobalBatchSampler
from contrastlab.presets import list_presets


def test_global_batches_split_across_ranks_in_order():
    one = list(GlobalBatchSampler(20, 8, seed=3, world_size=1))
    parts = [list(GlobalBatchSampler(20, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(one) == 16 and len(parts[0]) == len(parts[1]) == 8
    for b in range(2):  # global batch b = rank 0's 4 indices then rank 1's 4
        assert one[8 * b : 8 * b + 8] == parts[0][4 * b : 4 * b + 4] + parts[1][4 * b : 4 * b + 4]


def test_epochs_reshuffle_and_are_reproducible():
    sampler = GlobalBatchSampler(50, 10, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second and sorted(first) == sorted(second) == list(range(50))
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_evaluation_order_covers_everything_once():
    parts = [
        list(GlobalBatchSampler(11, 4, shuffle=False, rank=r, world_size=2, drop_last=False))
        for r in range(2)
    ]
    assert sorted(parts[0] + parts[1]) == list(range(11))
    assert [len(GlobalBatchSampler(11, 4, False, 0, r, 2, False)) for r in range(2)] == [
        len(parts[0]),
        len(parts[1]),
    ]


def test_grouped_global_batches_are_one_group_each_in_the_order_their_buckets_fill():
    """As detectron2's AspectRatioGroupedDataset fills two buckets from the shuffled stream,
    but with whole global batches: the grouped order keeps each group's indices in the
    permutation's order, cuts them into global batches that come out as they fill, and leaves
    each group's last ``count % G`` out."""
    groups = torch.randint(0, 2, (37,), generator=torch.Generator().manual_seed(1))
    permutation = list(GlobalBatchSampler(37, 37, seed=5))  # the epoch's whole order
    one = GlobalBatchSampler(37, 8, seed=5, groups=groups)
    order = list(one)
    counts = [int((groups == g).sum()) for g in (0, 1)]
    assert len(order) == len(one) == 8 * sum(c // 8 for c in counts) == 32  # 18 and 19
    for g, count in zip((0, 1), counts, strict=True):
        in_order = [i for i in permutation if groups[i] == g]
        assert [i for i in order if groups[i] == g] == in_order[: count - count % 8]
    batches = [order[b : b + 8] for b in range(0, len(order), 8)]
    assert all(len({int(groups[i]) for i in batch}) == 1 for batch in batches)
    filled_at = [max(permutation.index(i) for i in batch) for batch in batches]
    assert filled_at == sorted(filled_at)
    parts = [
        list(GlobalBatchSampler(37, 4, seed=5, rank=r, world_size=2, groups=groups))
        for r in range(2)
    ]
    for b in range(4):
        assert order[8 * b : 8 * b + 8] == parts[0][4 * b : 4 * b + 4] + parts[1][4 * b : 4 * b + 4]
    one.set_epoch(1)
    assert list(one) != order
    one.set_epoch(0)
    one.skip_batches(0, 2)
    assert list(one) == order[16:]
    with pytest.raises(ValueError, match="drop_last"):
        GlobalBatchSampler(37, 8, groups=groups, drop_last=False)


def test_in_memory_batches(tiny_cifar):
    data = ContrastDataModule(root=str(tiny_cifar), batch_size=16, train_subset=64)
    data.setup("fit")
    images, indices, labels = next(iter(data.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
    assert indices.shape == labels.shape == (16,)
    bank, evaluation = data.knn_dataloaders()
    assert sum(len(b[0]) for b in bank) == 64 and sum(len(b[0]) for b in evaluation) == 20


def test_lazy_folder_decodes_to_working_size(tmp_path):
    for split in ("train", "val"):
        for label in ("a", "b"):
            for i in range(3):
                path = tmp_path / split / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_png(torch.full((3, 20 + i, 30), 9, dtype=torch.uint8), str(path))
    data = ContrastDataModule(
        "folder", root=str(tmp_path), lazy=True, working_size=16, batch_size=2
    )
    data.setup("fit")
    images, _, labels = next(iter(data.train_dataloader()))
    assert images.shape == (2, 3, 16, 16) and data.num_classes == 2
    assert set(labels.tolist()) <= {0, 1}


def test_too_few_images_for_a_batch(tiny_cifar):
    data = ContrastDataModule(root=str(tiny_cifar), batch_size=512)
    data.setup("fit")
    with pytest.raises(DatasetError, match="cannot fill one global batch"):
        data.train_dataloader()


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_is_a_valid_config(preset, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", preset, "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    names = {"moco": "MoCoV2", "mocov2": "MoCoV2", "simclr": "SimCLR", "byol": "BYOL"}
    names["simsiam"] = "SimSiam"
    framework = next(part for part in preset.split("/")[1].split("_") if part in names)
    assert f"class_path: contrastlab.methods.{names[framework]}" in out
    if "synco" in preset or "mochi" in preset:
        assert "class_path: contrastlab.negatives.SyntheticNegatives" in out
    if "_ccrop" in preset:
        assert "class_path: contrastlab.views.ContrastiveCrop" in out
    if "simccrop" in preset:
        assert "class_path: contrastlab.views.SimCCrop" in out
