import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_cifar
from torchvision.io import write_png

from contrastlab.data import (
    Archive,
    DatasetError,
    ensure_dataset,
    read_cifar,
    read_image_folder,
    read_stl10,
    read_tiny_imagenet,
)
from contrastlab.data.readers import decode_image


def test_cifar10_layout_and_values(tmp_path):
    folder = write_cifar(tmp_path, per_batch=7)
    with (folder / "data_batch_1").open("rb") as f:
        raw = pickle.load(f, encoding="latin1")
    images = read_cifar(tmp_path, "cifar10", "train")
    assert images.images.shape == (35, 3, 32, 32) and images.images.dtype == torch.uint8
    # row 0: 1024 red values, then green, then blue, each plane row-major
    first = raw["data"][0]
    assert torch.equal(images.images[0, 0].flatten(), torch.from_numpy(first[:1024]))
    assert torch.equal(images.images[0, 2, 1, 0:3], torch.from_numpy(first[2048 + 32 : 2048 + 35]))
    assert images.labels[:7].tolist() == raw["labels"]
    assert len(read_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "test")) == 7
    assert images.classes[0] == "class0"


def test_cifar100(tmp_path):
    write_cifar(tmp_path, variant="cifar100", per_batch=5)
    images = read_cifar(tmp_path, "cifar100", "test")
    assert len(images) == 5 and images.num_classes == 100


def test_cifar_missing_folder_names_expected_path(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        read_cifar(tmp_path)


def test_cifar_missing_batch(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3: file not found"):
        read_cifar(tmp_path)


def test_cifar_corrupt_batch(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError, match="data_batch_2: not a readable CIFAR pickle"):
        read_cifar(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("labels"), "missing key 'labels'"),
        (lambda b: b.update(data=b["data"][:, :100]), "3072"),
        (lambda b: b.update(labels=[11] * len(b["labels"])), r"labels must lie in \[0, 10\)"),
        (lambda b: b.update(data=b["data"].astype(np.float32)), "uint8"),
    ],
)
def test_cifar_bad_structure(tmp_path, change, message):
    folder = write_cifar(tmp_path)
    path = folder / "test_batch"
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="latin1")
    change(batch)
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(DatasetError, match=message):
        read_cifar(tmp_path, split="test")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_foreign_globals(tmp_path):
    folder = write_cifar(tmp_path)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({"data": _Evil()}, f, protocol=2)
    with pytest.raises(DatasetError, match="refusing to load global .*print"):
        read_cifar(tmp_path, split="test")


def _write_stl10(root: Path, counts: dict[str, int]) -> torch.Tensor:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    images = {}
    for split, n in counts.items():
        x = torch.randint(0, 256, (n, 3, 96, 96), dtype=torch.uint8)
        images[split] = x
        # official layout: each channel column-major
        x.permute(0, 1, 3, 2).contiguous().numpy().tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            np.arange(1, n + 1, dtype=np.uint8).clip(1, 10).tofile(folder / f"{split}_y.bin")
    return images


def test_stl10_binary_layout(tmp_path):
    written = _write_stl10(tmp_path, {"train": 3, "unlabeled": 2, "test": 2})
    train = read_stl10(tmp_path, "train")
    assert torch.equal(train.images, written["train"])
    assert train.labels.tolist() == [0, 1, 2]
    union = read_stl10(tmp_path, "train+unlabeled")
    assert len(union) == 5 and union.labels is None


def test_stl10_truncated_file(tmp_path):
    _write_stl10(tmp_path, {"train": 2})
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="train_X.bin: size .* multiple of 27648"):
        read_stl10(tmp_path, "train")


def _png(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(torch.full((3, size, size), value, dtype=torch.uint8), str(path))


def test_tiny_imagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("n01\nn02\n")
    for wnid, value in (("n01", 10), ("n02", 20)):
        for i in range(2):
            _png(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", value)
    _png(root / "val" / "images" / "val_0.JPEG", 20)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t8\t8\n")
    train = read_tiny_imagenet(tmp_path, "train")
    assert train.labels.tolist() == [0, 0, 1, 1] and int(train.images[2, 0, 0, 0]) == 20
    val = read_tiny_imagenet(tmp_path, "val")
    assert val.labels.tolist() == [1]
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\n")
    with pytest.raises(DatasetError, match="val_annotations.txt:1"):
        read_tiny_imagenet(tmp_path, "val")


def test_image_folder_with_classes_flat_and_corrupt(tmp_path):
    _png(tmp_path / "cls" / "b" / "x.png", 5)
    _png(tmp_path / "cls" / "a" / "y.png", 7)
    labelled = read_image_folder(tmp_path / "cls")
    assert labelled.classes == ["a", "b"] and labelled.labels.tolist() == [0, 1]
    _png(tmp_path / "flat" / "1.png", 1, size=12)
    _png(tmp_path / "flat" / "2.png", 2, size=10)
    flat = read_image_folder(tmp_path / "flat", size=8)
    assert flat.labels is None and flat.images.shape == (2, 3, 8, 8)
    with pytest.raises(DatasetError, match="differ in size"):
        read_image_folder(tmp_path / "flat")
    (tmp_path / "flat" / "3.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="3.png: not a readable image"):
        read_image_folder(tmp_path / "flat", size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        read_image_folder(tmp_path / "empty")


def test_decode_to_working_size_keeps_centre(tmp_path):
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    image[:, :, 5:15] = 200
    write_png(image, str(tmp_path / "wide.png"))
    out = decode_image(tmp_path / "wide.png", size=10)
    assert out.shape == (3, 10, 10) and int(out.float().mean()) == 200


def _archive(tmp_path: Path) -> tuple[Path, str]:
    source = tmp_path / "src"
    write_cifar(source, per_batch=3)
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    import hashlib

    return tarball, hashlib.md5(tarball.read_bytes()).hexdigest()


def test_download_verifies_and_extracts(tmp_path):
    tarball, md5 = _archive(tmp_path)
    archive = Archive(tarball.as_uri(), md5, "cifar-10-batches-py", "batches.meta")
    root = ensure_dataset("cifar10", tmp_path / "data", archive=archive)
    assert len(read_cifar(root, split="test")) == 3
    assert ensure_dataset("cifar10", root, download=False, archive=archive) == root


def test_download_rejects_bad_checksum_and_says_where(tmp_path):
    tarball, _ = _archive(tmp_path)
    archive = Archive(tarball.as_uri(), "0" * 32, "cifar-10-batches-py", "batches.meta")
    target = tmp_path / "data"
    with pytest.raises(DatasetError, match=f"put the extracted .* at {target}/cifar-10-batches-py"):
        ensure_dataset("cifar10", target, archive=archive)


def test_env_var_root(tmp_path, monkeypatch):
    write_cifar(tmp_path, per_batch=2)
    monkeypatch.setenv("CONTRASTLAB_DATA", str(tmp_path))
    assert ensure_dataset("cifar10", None, download=False) == tmp_path
