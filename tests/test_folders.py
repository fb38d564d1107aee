"""Photo folders at the papers' protocol: views drawn on each image's own size and cut from it
at its own resolution, libjpeg-turbo decoding at DCT scales, the folder index, bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import CCROP_ONCE, QUIET_BATCHES_OF_16, fit_run
from photos import PHOTO_SHAPES, photo_pixels, save_photo, truncate, write_photo_folder
from test_crashproof import assert_same_state
from test_views import ks_statistic
from torchvision.transforms import RandomResizedCrop

from contrastlab.data import index as index_module
from contrastlab.data.datasets import FolderViews, PhotoBatch
from contrastlab.data.decode import dct_denominator, decode_rgb
from contrastlab.data.errors import DatasetError
from contrastlab.data.index import INDEX_NAME, folder_index
from contrastlab.data.module import ContrastDataModule
from contrastlab.data.sampling import whole_images
from contrastlab.methods.base import unpack
from contrastlab.runs.records import read_rows
from contrastlab.views import Augment, ViewSampler, crop_and_resize, random_resized_boxes
from contrastlab.views.augment import whole_view
from contrastlab.views.contrastive_crop import center_suppressed_boxes

SIZES = [(h, w) for _, h, w, _, _ in PHOTO_SHAPES] + [(60, 400), (500, 375), (1080, 1920)]


# ----------------------------------------------------------------------------- box distributions


def torchvision_params(n: int, size: tuple[int, int]) -> torch.Tensor:
    torch.manual_seed(0)
    image = torch.empty(3, *size)
    draws = [RandomResizedCrop.get_params(image, (0.2, 1.0), (3 / 4, 4 / 3)) for _ in range(n)]
    return torch.tensor(draws, dtype=torch.float64)


def test_boxes_follow_torchvision_on_each_images_own_size():
    """One batch of mixed sizes (every photo shape, a panorama, ImageNet's 500x375, 16:9 HD):
    each image's boxes against torchvision's ``get_params`` on that size. Boxes drawn on a
    square and mapped back (the working-size path) fail: they never start near a long side's
    ends and their aspect is wrong."""
    n = 4000
    sizes = torch.tensor(SIZES).repeat_interleave(n, dim=0)
    boxes = random_resized_boxes(
        len(sizes), sizes, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1)
    ).double()
    for k, size in enumerate(SIZES):
        ours, reference = boxes[k * n : (k + 1) * n], torchvision_params(n, size)
        for column in range(4):
            gap = ks_statistic(ours[:, column], reference[:, column])
            assert gap < 0.04, (size, column, gap)


def test_squared_boxes_would_fail_the_distribution_test():
    """The control: boxes drawn on the 256 square a 16:9 photo is cropped to, mapped into the
    photo, are far from torchvision's on the photo (the test above can fail)."""
    n, size = 4000, (1080, 1920)
    square = random_resized_boxes(n, (256, 256), (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator())
    scale, offset = 1080 / 256, (1920 - 1080) / 2
    mapped = square.double() * scale
    mapped[:, 1] += offset
    reference = torchvision_params(n, size)
    assert ks_statistic(mapped[:, 1], reference[:, 1]) > 0.2


def test_center_suppressed_boxes_use_each_images_size():
    """Per-image sizes give each image exactly the boxes it gets alone (same draws)."""
    sizes = torch.tensor([[60, 400], [120, 80], [64, 64]])
    stored = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.5, 0.7]])
    batch = center_suppressed_boxes(
        stored, sizes, alpha=0.6, generator=torch.Generator().manual_seed(4)
    )
    for i, size in enumerate(sizes.tolist()):
        alone = center_suppressed_boxes(
            stored, tuple(size), alpha=0.6, generator=torch.Generator().manual_seed(4)
        )
        assert torch.equal(batch[i], alone[i])


# ----------------------------------------------------------------------------- decoding


def test_decoder_reads_every_photo_format_as_pil_does(tmp_path):
    from PIL import Image

    for path in write_photo_folder(tmp_path, copies=1, classes=1):
        ours = decode_rgb(path)
        with Image.open(path) as image:
            reference = np.asarray(image.convert("RGB"))
        assert ours.shape == reference.shape and ours.dtype == np.uint8, path.name
        assert np.abs(ours.astype(int) - reference).max() <= 1, path.name


def test_dct_denominator_keeps_every_box_at_its_output_size():
    assert dct_denominator((2000, 1500), 900.0, 224) == 4  # 900 / 4 = 225 >= 224
    assert dct_denominator((2000, 1500), 895.0, 224) == 2  # 895 / 4 < 224
    assert dct_denominator((2000, 1900), 1800.0, 224) == 8
    assert dct_denominator((375, 500), 300.0, 224) == 1
    assert dct_denominator((100, 100), 50.0, 224) == 1  # upsampled anyway: decode it whole


def test_a_view_from_the_dct_scaled_decode_matches_the_full_decode(tmp_path):
    """A 1024x1280 photo, a box of 600x700 and a 128-px view: decoded at 1/4 (150x175 px of
    box, still >= 128), the view equals the one from the full decode to JPEG precision."""
    path = save_photo(tmp_path / "big.jpg", photo_pixels(1024, 1280, seed=3))
    box = torch.tensor([[200, 300, 600, 700]])
    dataset = FolderViews([path], None, torch.tensor([[1024, 1280]]))
    batch = dataset[(0, box, 128)]
    assert batch.shapes == [(256, 320)]  # 1/4
    small = crop_and_resize(batch.padded().float(), batch.boxes[0], 128)
    full = torch.from_numpy(decode_rgb(path)).permute(2, 0, 1)[None].float()
    reference = crop_and_resize(full, box.float(), 128)
    assert (small - reference).abs().mean() < 1.5


def packed(photos: list[torch.Tensor], boxes: list[torch.Tensor]) -> PhotoBatch:
    """A PhotoBatch of ``(h, w, 3)`` photos with one box ``(1, 4)`` each."""
    return PhotoBatch(
        torch.cat([p.reshape(-1) for p in photos]),
        [(p.shape[0], p.shape[1]) for p in photos],
        torch.arange(len(photos)),
        torch.full((len(photos),), -1),
        torch.stack(boxes, dim=1).float(),
    )


def random_photos(shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (h, w, 3), generator=generator, dtype=torch.uint8)
            for h, w in shapes]  # fmt: skip


def test_padded_batch_crops_equal_each_image_alone():
    """A packed batch is laid out padded to the largest photo; a crop that reaches a photo's
    right or bottom edge must read that edge, not the padding."""
    shapes = [(40, 30), (25, 50), (33, 33)]
    photos = random_photos(shapes)
    edge_boxes = [torch.tensor([[h - 10.5, w - 7.25, 10.5, 7.25]]) for h, w in shapes]
    batch = packed(photos, edge_boxes)
    images = batch.padded()
    assert images.shape == (3, 3, 40, 50)
    crops = crop_and_resize(images.float(), batch.boxes[0], 16)
    for i, (photo, box) in enumerate(zip(photos, edge_boxes, strict=True)):
        alone = crop_and_resize(photo.permute(2, 0, 1)[None].float(), box, 16)
        torch.testing.assert_close(crops[i : i + 1], alone, atol=1e-3, rtol=0)


def test_folder_batches_pack_the_decoded_photos_and_scale_their_boxes(tmp_path):
    """FolderViews decodes a batch straight into one packed tensor: each photo as PIL decodes
    it, each box in the decoded photo's pixels (a 1/2-scale decode halves it)."""
    from PIL import Image

    files = write_photo_folder(tmp_path, copies=1, classes=1)
    big = save_photo(tmp_path / "big.jpg", photo_pixels(600, 800, seed=1))
    files.append(big)
    sizes = torch.tensor([[Image.open(f).height, Image.open(f).width] for f in files])
    dataset = FolderViews(files, None, sizes)
    boxes = [torch.tensor([[0, 0, h, w]]) for h, w in sizes.tolist()]
    batch = dataset.__getitems__([(i, b, 200) for i, b in enumerate(boxes)])
    assert batch.shapes[-1] == (300, 400)  # 1/2: 600 / 4 would leave less than 200 px
    images = batch.padded()
    for i, path in enumerate(files[:-1]):
        h, w = batch.shapes[i]
        with Image.open(path) as image:
            reference = torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1)
        assert (images[i, :, :h, :w].int() - reference.int()).abs().max() <= 1, path.name
        assert torch.equal(batch.boxes[0, i], boxes[i][0].float())
    assert torch.equal(batch.boxes[0, -1], torch.tensor([0.0, 0.0, 300.0, 400.0]))


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)"),
        ),
    ],
)
def test_decoding_on_the_device_gives_the_workers_photos(tmp_path, device):
    """decode_on_device: the workers pass the JPEG files on (CMYK and PNG decoded by them) and
    the batch is decoded by torchvision's decode_jpeg on its device, photo for photo what the
    workers' libjpeg-turbo makes (nvJPEG's IDCT may differ by a few levels)."""
    files = write_photo_folder(tmp_path, copies=1, classes=1)
    from PIL import Image

    sizes = torch.tensor([[Image.open(f).height, Image.open(f).width] for f in files])
    requests = [(i, torch.tensor([[0, 0, h, w]]), 16) for i, (h, w) in enumerate(sizes.tolist())]
    in_workers = FolderViews(files, None, sizes).__getitems__(requests)
    on_device = FolderViews(files, None, sizes, decode_on_device=True).__getitems__(requests)
    kinds = [name.split("_")[0] for name in (f.name for f in files)]
    assert [e is None for e in on_device.encoded] == [k in ("cmyk", "lossless") for k in kinds]
    assert on_device.shapes == [tuple(s) for s in sizes.tolist()]  # whole: no DCT scaling
    on_device.pixels = on_device.pixels.to(device)
    images, reference = (
        on_device.padded().cpu(),
        FolderViews(files, None, sizes)
        .__getitems__([(i, b, 10_000) for i, b, _ in requests])
        .padded(),
    )
    for i, (h, w) in enumerate(on_device.shapes):
        gap = (images[i, :, :h, :w].int() - reference[i, :, :h, :w].int()).abs().max()
        assert gap <= (1 if device == "cpu" else 8), (kinds[i], gap)
    assert in_workers.encoded is None


def test_a_file_changed_after_indexing_is_named(tmp_path):
    path = save_photo(tmp_path / "a.jpg", photo_pixels(40, 60, seed=0))
    dataset = FolderViews([path], None, torch.tensor([[60, 40]]))  # the index's old size
    with pytest.raises(DatasetError, match="changed after the folder was indexed"):
        dataset.__getitems__([(0, torch.tensor([[0, 0, 40, 40]]), 16)])


def test_localisation_input_is_each_whole_image_resized():
    """whole_view of a padded batch with whole-image extents equals each image resized alone."""
    shapes = [(40, 30), (25, 50)]
    photos = random_photos(shapes)
    extents = [whole_images(torch.tensor([0]), torch.tensor([s]), None)[0] for s in shapes]
    batch = packed(photos, extents)
    aug = Augment(size=16)
    views = whole_view(batch.padded(), aug, batch.boxes[0])
    assert views.shape[-2:] == (16, 16)
    for i, photo in enumerate(photos):
        alone = whole_view(photo.permute(2, 0, 1)[None], aug, batch.boxes[0][i : i + 1])
        torch.testing.assert_close(views[i : i + 1], alone, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- the data module


def plain_views(size: int) -> ViewSampler:
    """Crops only (no colour, no flip): the views show the photo's own pixels."""
    aug = Augment(size=size, jitter_prob=0, grayscale_prob=0, flip_prob=0, mean=(0, 0, 0),
                  std=(1, 1, 1))  # fmt: skip
    return ViewSampler([aug, aug], seed=0)


def red_left_edge_folder(root):
    """One 16:9 photo, grey but for a red band over its left eighth: outside the centre
    square a working size keeps, so only views cut from the whole image can show it."""
    pixels = np.full((90, 160, 3), 128, dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    for i in range(4):
        save_photo(root / "train" / "a" / f"{i}.jpg", pixels)


def red_share_of_views(data: ContrastDataModule, views: ViewSampler, epochs: int) -> float:
    data.setup("fit")
    data.attach_views(views.draw_boxes, views.augments[0].size)
    red, total = 0, 0
    for epoch in range(epochs):
        loader = data.train_dataloader()
        loader.batch_sampler.sampler.set_epoch(epoch)
        for batch in loader:
            for view in views(*(unpack(batch)[i] for i in (0, 1, 3))):
                is_red = (view[:, 0] > 0.8) & (view[:, 1] < 0.2)
                red += int(is_red.flatten(1).any(1).sum())
                total += len(view)
    return red / total


def test_views_reach_the_photos_sides_only_at_native_resolution(tmp_path):
    red_left_edge_folder(tmp_path)
    native = ContrastDataModule("folder", root=str(tmp_path), lazy=True, batch_size=4)
    squared = ContrastDataModule(
        "folder", root=str(tmp_path), lazy=True, working_size=64, batch_size=4
    )
    assert red_share_of_views(native, plain_views(32), epochs=10) > 0.2
    assert red_share_of_views(squared, plain_views(32), epochs=10) == 0.0


def test_request_boxes_depend_on_seed_epoch_and_batch_only(tmp_path):
    """The training loader draws the boxes before decoding: the same with 0 or 2 workers, and
    from a mid-epoch resume (skip) the same as in the uninterrupted epoch."""
    write_photo_folder(tmp_path / "train", copies=1)

    def epoch_boxes(workers: int, skip: int = 0) -> list[torch.Tensor]:
        data = ContrastDataModule(
            "folder", root=str(tmp_path), lazy=True, batch_size=4, num_workers=workers
        )
        data.setup("fit")
        views = plain_views(16)
        data.attach_views(views.draw_boxes, 16)
        loader = data.train_dataloader()
        loader.batch_sampler.sampler.set_epoch(1)
        if skip:
            loader.load_state_dict({"epoch": 1, "batches": skip})
        return [batch.boxes for batch in loader]

    reference = epoch_boxes(0)
    assert len(reference) == 4
    with_workers = epoch_boxes(2)
    resumed = epoch_boxes(0, skip=2)
    assert all(torch.equal(a, b) for a, b in zip(reference, with_workers, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(reference[2:], resumed, strict=True))


# ----------------------------------------------------------------------------- the index


def test_index_is_built_once_and_refreshed_when_the_folder_changes(tmp_path, monkeypatch):
    files = write_photo_folder(tmp_path, copies=1)
    first = folder_index(tmp_path)
    assert (tmp_path / INDEX_NAME).is_file() and len(first) == len(files)
    assert first.classes == ["class_0", "class_1"]
    for name, (h, w) in zip(first.files, first.sizes.tolist(), strict=True):
        shape = next(s for s in PHOTO_SHAPES if name.split("/")[1].startswith(s[0] + "_"))
        assert (h, w) == (shape[1], shape[2]), name

    def no_rebuild(*args):
        raise AssertionError("listed and rebuilt a fresh index")

    monkeypatch.setattr(index_module, "_build", no_rebuild)
    again = folder_index(tmp_path)  # from the file: nothing listed, nothing decoded
    assert again.files == first.files and np.array_equal(again.sizes, first.sizes)

    monkeypatch.undo()
    checked = []
    monkeypatch.setattr(index_module, "check_image", lambda p: checked.append(p) or ((7, 9), 1))
    save_photo(tmp_path / "class_1" / "new.jpg", photo_pixels(7, 9, seed=0))
    refreshed = folder_index(tmp_path)
    assert len(refreshed) == len(files) + 1 and "class_1/new.jpg" in refreshed.files
    assert [p.name for p in map(lambda p: __import__("pathlib").Path(p), checked)] == ["new.jpg"]


def test_bad_files_are_named_before_training_or_skipped(tmp_path, capsys):
    files = write_photo_folder(tmp_path / "train", copies=1)
    truncate(files[0])
    (tmp_path / "train" / "class_1" / "notes.png").write_text("not an image")
    with pytest.raises(DatasetError) as error:
        ContrastDataModule("folder", root=str(tmp_path), lazy=True, batch_size=4).setup("fit")
    message = str(error.value)
    assert "2 of" in message and str(files[0]) in message and "notes.png" in message
    assert "Premature end of JPEG file" in message and "skip_bad_images" in message

    data = ContrastDataModule(
        "folder", root=str(tmp_path), lazy=True, batch_size=4, skip_bad_images=True
    )
    data.setup("fit")
    assert len(data.train_set) == len(files) - 1
    assert "left out 2 file(s)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_photo_folder(root / "train", copies=2)
    write_photo_folder(root / "val", copies=1)
    return root


FOLDER = ["--data.dataset", "folder", "--data.lazy", "true", *QUIET_BATCHES_OF_16]
TINY = ["--model.augment.size", "16", "--data.batch_size", "8", "--trainer.max_epochs", "2"]
RUNS = {
    "cifar10/mocov2_synco": [
        "--model.queue_size",
        "40",
        "--model.bn_splits",
        "2",
        "--model.synthetic_warmup_epochs",
        "0",
    ],
    "cifar10/simclr_ccrop": [*CCROP_ONCE, "--data.num_workers", "2"],
    # the ImageNet BYOL recipe, small: LARS's velocities, the EMA schedule and both views resume
    "imagenet/byol": [
        "--model.backbone=resnet18",
        "--model.proj_hidden=64",
        "--model.pred_hidden=64",
        "--model.second_view.size=16",
        "--data.num_workers=0",
        "--trainer.strategy=auto",
    ],
}


@pytest.mark.parametrize("config", list(RUNS))
def test_training_on_a_photo_folder_resumes_exactly(tmp_path, photo_root, config):
    options = [*FOLDER, *TINY, *RUNS[config]]
    straight = tmp_path / "straight"
    fit_run(straight, photo_root, config, *options)
    resumed = tmp_path / "resumed"
    stopped = fit_run(
        resumed, photo_root, config, *options, "--trainer.callbacks+=conftest.StopAfterFirstEpoch"
    )
    assert stopped["epoch"] == 0
    if config.endswith("ccrop"):  # localised on the whole images at epoch 0
        boxes = stopped["state_dict"]["views.box_sampler.boxes"]
        assert boxes.shape == (32, 4) and (boxes != torch.tensor([0.0, 0, 1, 1])).any()
    fit_run(resumed, photo_root, config, *options, "--resume")
    assert_same_state(straight / "checkpoints" / "last.ckpt", resumed / "checkpoints" / "last.ckpt")
    assert math.isfinite(float(stopped["contrastlab"]["knn_untrained"]))
    if config.endswith("synco"):  # and the same recipe decoding on the device, one epoch
        options = [*options, "--trainer.max_epochs", "1", "--data.decode_on_device", "true"]
        fit_run(tmp_path / "on_device", photo_root, config, *options)
    if config.endswith("ccrop"):  # the crops picture of a native-resolution run
        from contrastlab.app.cli import main

        out = tmp_path / "crops.png"
        main(["crops", "--checkpoint", str(resumed / "checkpoints" / "last.ckpt"),
              "--out", str(out), "--images", "3"])  # fmt: skip
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_new_box_store_reaches_the_next_epochs_crops_with_persistent_workers(tmp_path):
    """The boxes are drawn in the training process when an epoch's batches are asked for:
    a store changed between epochs (a localisation) shapes the very next epoch's crops, with
    two persistent workers that were started before the change."""
    from contrastlab.views import ContrastiveCrop

    write_photo_folder(tmp_path / "train", copies=1)
    data = ContrastDataModule("folder", root=str(tmp_path), lazy=True, batch_size=4, num_workers=2)
    data.setup("fit")
    crop = ContrastiveCrop(alpha=1.0, warmup_epochs=0, scale=(0.01, 0.02))
    views = ViewSampler([Augment(size=8), Augment(size=8)], box_sampler=crop)
    data.attach_views(views.draw_boxes, 8)
    crop.reset(len(data.train_set))
    loader = data.train_dataloader()
    assert loader.persistent_workers
    for _ in loader:  # epoch 0: RandomResizedCrop, the workers start
        pass
    crop.start_if_due(0)
    crop.update(torch.arange(len(data.train_set)), torch.tensor([[0.7, 0.0, 1.0, 0.3]]))
    loader.batch_sampler.sampler.set_epoch(1)
    sizes = data.train_set.sizes
    for batch in loader:
        decoded = torch.tensor(batch.shapes, dtype=torch.float64)
        full = sizes[batch.indices].double()
        boxes = batch.boxes.double() * (full / decoded).repeat(1, 2)  # back to the photo
        centre_y = (boxes[..., 0] + boxes[..., 2] / 2) / full[:, 0]
        centre_x = (boxes[..., 1] + boxes[..., 3] / 2) / full[:, 1]
        assert (centre_y >= 0.69).all() and (centre_x <= 0.31).all()


# ------------------------------------------------------------------- labels and flat folders


def solid_colour_folders(root, splits: dict[str, str]) -> None:
    """``root/<split>/<class>/k.png``: class ``a`` red, ``b`` green, ``c`` blue (a few shades
    each), so that even an untrained encoder tells the classes apart."""
    colours = {"a": (220, 20, 20), "b": (20, 220, 20), "c": (20, 20, 220)}
    for split, names in splits.items():
        for name in names:
            for k in range(8):
                pixels = np.full((32, 32, 3), colours[name], dtype=np.uint8) + np.uint8(3 * k)
                save_photo(root / split / name / f"{k}.png", pixels, "RGB", "PNG")


@pytest.mark.parametrize("lazy", [False, True])
def test_an_evaluation_split_missing_a_class_keeps_the_training_labels(tmp_path, lazy):
    """train/ has classes a, b, c; val/ only a and c. Numbered per split, val's c would be
    label 1 (train's b) and every c query wrong: an untrained encoder's kNN on solid colours
    would be 50%, not 100%."""
    solid_colour_folders(tmp_path / "data", {"train": "abc", "val": "ac"})
    data = ContrastDataModule(
        "folder",
        root=str(tmp_path / "data"),
        batch_size=8,
        lazy=lazy,
        working_size=32 if lazy else None,
    )
    data.setup("fit")
    assert data.num_classes == 3
    labels = [int(data.eval_set[i][2]) for i in range(len(data.eval_set))]
    assert sorted(set(labels)) == [0, 2]
    checkpoint = fit_run(
        tmp_path / "run",
        tmp_path / "data",
        "cifar10/mocov2_quick",
        "--data.dataset=folder",
        f"--data.lazy={str(lazy).lower()}",
        "--data.working_size=32",
        "--data.train_subset=null",
        "--data.eval_subset=null",
        "--data.batch_size=8",
        "--model.bn_splits=2",
        "--model.queue_size=64",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.enable_progress_bar=false",
    )
    assert checkpoint["contrastlab"]["knn_untrained"] == 100.0


def test_an_evaluation_class_the_training_split_lacks_is_named(tmp_path):
    solid_colour_folders(tmp_path, {"train": "ab", "val": "ac"})
    data = ContrastDataModule("folder", root=str(tmp_path), batch_size=8)
    with pytest.raises(
        DatasetError,
        match=r"val: class folder\(s\) c are not classes of the training split \(2 classes: a, b\)",
    ):
        data.setup("fit")


def test_a_flat_folder_trains_resumes_and_says_why_there_is_no_knn(tmp_path, capsys):
    """The README's promise: an unlabelled folder of photos trains (lazily, at native
    resolution), its index is written and read back, the run resumes, and the evaluations
    that need labels say so instead of failing obscurely."""
    from contrastlab.app.cli import main

    folder = tmp_path / "photos"
    for path in write_photo_folder(tmp_path / "classes", copies=1, classes=2):
        target = folder / f"{path.parent.name}_{path.name}"
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
    options = [
        "--model.backbone=resnet18",
        "--model.proj_hidden=512",
        "--model.augment.size=32",
        "--model.queue_size=64",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--trainer.strategy=auto",
        "--trainer.enable_progress_bar=false",
    ]
    fit_run(tmp_path / "run", folder, "imagenet/mocov2", *options, "--trainer.max_epochs=1")
    assert (folder / INDEX_NAME).is_file()
    first = capsys.readouterr().out
    assert first.count("no kNN monitor: it needs labelled training and evaluation splits") == 1
    resumed = fit_run(
        tmp_path / "run", folder, "imagenet/mocov2", *options, "--trainer.max_epochs=2", "--resume"
    )
    resumed_out = capsys.readouterr().out
    assert resumed["epoch"] == 1 and "no kNN monitor" not in resumed_out
    # the label-free monitor: its untrained point once (kept in the checkpoint), then each epoch
    assert (
        "RankMe of the untrained encoder" in first and "RankMe of the untrained" not in resumed_out
    )
    _, rows = read_rows(tmp_path / "run" / "metrics.csv")
    points = [(int(r["epoch"]), float(r["rankme/value"])) for r in rows if r.get("rankme/value")]
    assert [epoch for epoch, _ in points] == [-1, 0, 1]
    photos = sum(1 for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert all(1.0 <= value <= photos for _, value in points)  # the rank of `photos` rows
    assert resumed["contrastlab"]["rankme_untrained"]["rankme/value"] == points[0][1]
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit, match="has no labels \\(a flat folder\\)"):
        main(["knn", "--checkpoint", checkpoint])
