"""The COCO tasks of ``contrastlab transfer``: mask targets as detectron2 makes them, the C4
mask head on the box head's res5 features, COCO box and mask AP on hand-made cases, the COCO
items, and a run on a COCO-layout dataset the tests write (tests/scenes.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from scenes import write_scene_coco
from torchvision.ops import roi_align

from contrastlab.app.cli import main
from contrastlab.app.report import transfer_text
from contrastlab.app.transfer import build_detector, read_task_data
from contrastlab.transfer.coco import CocoError, read_coco
from contrastlab.transfer.coco_metrics import coco_detection_ap, encode_masks
from contrastlab.transfer.data import CocoDetectionImages
from contrastlab.transfer.detectors import C4Settings
from contrastlab.transfer.mask_rcnn import (
    AlignedLevelRoIAlign,
    FpnMaskHeads,
    FpnSettings,
    MaskTransform,
    UpsampleMaskHead,
    mask_loss,
    mask_rcnn_c4,
    mask_rcnn_fpn,
)
from contrastlab.transfer.masks import (
    bitmask_targets,
    flip_polygons,
    pack_polygons,
    paste_masks,
    polygon_targets,
    polygons_to_mask,
    rle_to_mask,
    unpack_polygons,
)
from contrastlab.transfer.tasks import COCO_C4_1X, COCO_C4_2X, COCO_FPN_1X, TASKS, configure

RECT = [2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0]  # x 2..6, y 1..4


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return write_scene_coco(tmp_path_factory.mktemp("scenes"))


# --------------------------------------------------------------------------- settings


def test_the_coco_tasks_are_the_c4_configs_schedules():
    for task, length, steps in (
        (COCO_C4_1X, 90000, (60000, 80000)),
        (COCO_C4_2X, 180000, (120000, 160000)),
    ):
        s, solver = task.settings, task.solver
        assert (solver.iterations, solver.steps, solver.warmup_iterations) == (length, steps, 1000)
        assert (solver.lr, solver.batch, solver.precise_bn_iterations) == (0.02, 16, 200)
        assert s.train_sizes == (640, 672, 704, 736, 768, 800) and s.test_size == 800
        assert (s.max_size, s.roi_batch, s.rpn_post_nms_test, s.pooler_resolution) == (
            1333,
            512,
            1000,
            14,
        )
        assert task.masks and task.dataset == "coco" and TASKS[task.name] is task
    assert configure(COCO_C4_1X, iterations=90).solver.steps == (60, 80)


# --------------------------------------------------------------------------- mask targets


def test_an_axis_aligned_polygon_with_whole_corners_covers_exactly_its_pixels():
    mask = polygons_to_mask([RECT, [7, 5, 9, 5, 9, 7, 7, 7]], 8, 10)  # two parts: their union
    expected = np.zeros((8, 10), dtype=bool)
    expected[1:4, 2:6] = True
    expected[5:7, 7:9] = True
    assert np.array_equal(mask, expected)
    assert not polygons_to_mask([], 4, 5).any()


def test_polygon_targets_move_and_scale_the_polygon_into_each_region():
    boxes = torch.tensor(
        [
            [2.0, 1.0, 6.0, 4.0],  # the polygon's own box: all of it
            [2.0, 1.0, 10.0, 4.0],  # twice as wide: the left half
            [4.0, 1.0, 8.0, 4.0],  # moved right by half: the left half
            [2.0, -2.0, 6.0, 4.0],  # twice as tall: the lower half
        ]
    )
    targets = polygon_targets([[RECT]] * 4, boxes, 14)
    assert targets.shape == (4, 14, 14) and targets.dtype == torch.bool
    assert targets[0].all()
    left = torch.zeros(14, 14, dtype=torch.bool)
    left[:, :7] = True
    assert torch.equal(targets[1], left) and torch.equal(targets[2], left)
    assert torch.equal(targets[3], left.T.flip(0))  # rows 7..13


def slow_aligned_roi_align(mask: np.ndarray, box: list[float], size: int) -> np.ndarray:
    """RoIAlign written out (scale 1, half-pixel aligned, adaptive sampling): each of the
    ``size x size`` cells averages ``ceil(h / size) x ceil(w / size)`` bilinear samples at
    the centres of its sub-cells, pixel ``i``'s value sitting at ``i`` after the half-pixel
    shift; outside the image by more than a pixel a sample is 0, else clamped to the edge."""
    height, width = mask.shape
    x0, y0 = box[0] - 0.5, box[1] - 0.5
    bin_w, bin_h = (box[2] - box[0]) / size, (box[3] - box[1]) / size
    grid_w, grid_h = math.ceil((box[2] - box[0]) / size), math.ceil((box[3] - box[1]) / size)

    def sample(y: float, x: float) -> float:
        if y < -1 or y > height or x < -1 or x > width:
            return 0.0
        y, x = min(max(y, 0.0), height - 1), min(max(x, 0.0), width - 1)
        y_low, x_low = int(y), int(x)
        y_high, x_high = min(y_low + 1, height - 1), min(x_low + 1, width - 1)
        ly, lx = y - y_low, x - x_low
        return (
            (1 - ly) * (1 - lx) * mask[y_low, x_low]
            + (1 - ly) * lx * mask[y_low, x_high]
            + ly * (1 - lx) * mask[y_high, x_low]
            + ly * lx * mask[y_high, x_high]
        )

    out = np.zeros((size, size))
    for row in range(size):
        for col in range(size):
            values = [
                sample(y0 + row * bin_h + (i + 0.5) * bin_h / grid_h,
                       x0 + col * bin_w + (j + 0.5) * bin_w / grid_w)
                for i in range(grid_h)
                for j in range(grid_w)
            ]  # fmt: skip
            out[row, col] = np.mean(values)
    return out


def test_bitmask_targets_are_aligned_roialign_kept_at_one_half_and_above():
    mask = torch.zeros(1, 8, 10)
    mask[0, 1:4, 2:6] = 1
    for box, size in (([2, 1, 6, 4], 14), ([1.5, 0.2, 9.0, 6.5], 7), ([-2, -1, 12, 9], 5)):
        reference = slow_aligned_roi_align(mask[0].numpy(), box, size) >= 0.5
        cut = bitmask_targets(mask, torch.tensor([box], dtype=torch.float32), size)[0]
        assert np.array_equal(cut.numpy(), reference), box
    # one cell over x 4..8: samples at 4, 5 (inside) and 6, 7 (outside) average exactly 0.5
    assert bitmask_targets(mask, torch.tensor([[4.0, 1.0, 8.0, 4.0]]), 1).item()
    assert not bitmask_targets(mask, torch.tensor([[4.5, 1.0, 8.5, 4.0]]), 1).item()  # 0.375
    assert bitmask_targets(mask, torch.zeros(0, 4), 14).shape == (0, 14, 14)


def test_packed_polygons_unpack_and_flip_with_the_photo():
    objects = [[RECT, [7.0, 5.0, 9.0, 5.0, 9.0, 7.0]], [[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]]]
    packed = pack_polygons(objects)
    assert packed["polygon_lengths"].tolist() == [8, 6, 8]
    assert packed["object_polygons"].tolist() == [2, 1]
    back = unpack_polygons(packed)
    assert [[p.tolist() for p in obj] for obj in back] == objects
    flipped = unpack_polygons({**packed, "polygons": flip_polygons(packed["polygons"], 10)})
    for original, mirrored in zip(back, flipped, strict=True):
        assert np.array_equal(
            polygons_to_mask(mirrored, 8, 10), polygons_to_mask(original, 8, 10)[:, ::-1]
        )
    assert unpack_polygons(pack_polygons([])) == []


def test_the_transform_scales_polygons_as_it_scales_boxes():
    transform = MaskTransform(40, 200, [0.0] * 3, [1.0] * 3, size_divisible=1)
    transform.train()
    target = {"boxes": torch.tensor([[2.0, 1.0, 6.0, 4.0]]), **pack_polygons([[RECT]])}
    images, (scaled,) = transform([torch.rand(3, 20, 25)], [target])
    assert images.tensors.shape[-2:] == (40, 50)
    xs, ys = scaled["polygons"][0::2], scaled["polygons"][1::2]
    assert torch.allclose(torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]), scaled["boxes"][0])
    assert torch.allclose(scaled["boxes"][0], torch.tensor([4.0, 2.0, 12.0, 8.0]))


# --------------------------------------------------------------------------- the mask head


def test_the_mask_head_is_detectron2s_upsampling_head_with_its_initialisation():
    torch.manual_seed(0)
    head = UpsampleMaskHead(512, 80)
    assert head(torch.randn(3, 512, 7, 7)).shape == (3, 80, 14, 14)
    weight = head.upsample.weight  # (in, out, 2, 2): torch's fan-out of it is in * 4
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 4)), rel=0.03)
    assert head.predictor.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert not head.upsample.bias.any() and not head.predictor.bias.any()


def test_the_mask_loss_is_the_mean_bce_of_each_regions_own_class():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 5, requires_grad=True)
    classes = torch.tensor([2, 0, 2])
    targets = torch.rand(3, 5, 5) > 0.5
    p = torch.sigmoid(logits[torch.arange(3), classes])
    t = targets.float()
    by_hand = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert mask_loss(logits, classes, targets).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert mask_loss(logits, torch.tensor([1, 0, 2]), targets).item() != pytest.approx(
        by_hand.item(), rel=1e-5
    )
    none = mask_loss(logits[:0], classes[:0], targets[:0])
    assert none.item() == 0.0 and none.requires_grad


SMALL = C4Settings(
    train_sizes=(64, 80), test_size=80, max_size=120, roi_batch=16, rpn_post_nms_test=20
)


def tiny_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.rand(3, 60, 80), torch.rand(3, 72, 64)]
    objects = [[RECT], [[10.0, 10.0, 40.0, 10.0, 25.0, 40.0]]]
    targets = [
        {
            "boxes": torch.tensor([[2.0, 1.0, 6.0, 4.0], [10.0, 10.0, 40.0, 40.0]]),
            "labels": torch.tensor([1, 2]),
            **pack_polygons(objects),
        }
        for _ in images
    ]
    return images, targets


def test_res5_runs_once_per_training_step_for_both_heads_and_the_mask_loss_trains():
    """detectron2's Res5ROIHeads: the mask head reads the box head's res5 features of the
    foreground regions (res5's BatchNorm sees every sampled region once)."""
    torch.manual_seed(0)
    model = mask_rcnn_c4(torchvision.models.resnet18(), num_classes=2, settings=SMALL)
    heads = model.roi_heads
    seen: list[torch.Tensor] = []
    heads.box_head.norm.register_forward_hook(lambda m, i, o: seen.append(o))
    read: list[torch.Tensor] = []
    heads.mask_predictor_c4.register_forward_hook(lambda m, i, o: read.append(i[0]))
    model.train()
    images, targets = tiny_batch()
    losses = model(images, targets)
    assert len(seen) == 1 and seen[0].shape[0] == 2 * 16  # 16 regions per image
    assert len(read) == 1 and 0 < read[0].shape[0] < seen[0].shape[0]
    rows = torch.stack([(seen[0] == row).flatten(1).all(1) for row in read[0]])
    assert rows.any(1).all()  # every mask region's features are a region's res5 output
    assert set(losses) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    losses["loss_mask"].backward()
    assert heads.mask_predictor_c4.upsample.weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_evaluation_returns_a_mask_of_the_detected_class_pasted_in_the_image():
    torch.manual_seed(0)
    model = mask_rcnn_c4(torchvision.models.resnet18(), num_classes=2, settings=SMALL).eval()
    images, _ = tiny_batch()
    logits: list[torch.Tensor] = []
    model.roi_heads.mask_predictor_c4.register_forward_hook(lambda m, i, o: logits.append(o))
    with torch.no_grad():
        found = model(images)
    for image, result in zip(images, found, strict=True):
        assert result["masks"].shape == (len(result["boxes"]), 1, *image.shape[-2:])
        assert result["masks"].min() >= 0 and result["masks"].max() <= 1
    first = logits[0][: len(found[0]["boxes"])]
    chosen = first[torch.arange(len(first)), found[0]["labels"] - 1].sigmoid()
    pasted = paste_masks(chosen[:, None], found[0]["boxes"], tuple(images[0].shape[-2:]))
    assert torch.allclose(pasted, found[0]["masks"], atol=1e-6)


def pasted_by_hand(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int):
    """detectron2's paste written out pixel by pixel: each pixel centre mapped into its box at
    mask scale, the mask's four neighbouring cells weighted bilinearly, cells outside the mask
    zero (a slow reference for paste_masks)."""
    size = masks.shape[-1]
    out = torch.zeros(len(masks), 1, height, width, dtype=torch.float64)

    def cell(n: int, row: int, column: int) -> float:
        inside = 0 <= row < size and 0 <= column < size
        return float(masks[n, 0, row, column]) if inside else 0.0

    for n, (x0, y0, x1, y1) in enumerate(boxes.double().tolist()):
        for i in range(height):
            for j in range(width):
                u = (j + 0.5 - x0) / (x1 - x0) * size - 0.5
                v = (i + 0.5 - y0) / (y1 - y0) * size - 0.5
                left, top = math.floor(u), math.floor(v)
                a, b = u - left, v - top
                out[n, 0, i, j] = (
                    (1 - a) * (1 - b) * cell(n, top, left)
                    + a * (1 - b) * cell(n, top, left + 1)
                    + (1 - a) * b * cell(n, top + 1, left)
                    + a * b * cell(n, top + 1, left + 1)
                )
    return out


def test_masks_are_pasted_as_detectron2_samples_each_pixel_centre():
    """Each mask sampled over its box grown to whole pixels plus one, as detectron2 pastes on
    the CPU; outside it a pixel keeps a little of the mask's border at most (under 0.5: the
    large box's neighbours do) and is left 0."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 1, 5, 5, generator=generator)
    boxes = torch.tensor(
        [
            [3.3, 2.7, 11.6, 9.2],
            [0.0, 0.0, 4.0, 20.0],  # past the image's bottom
            [14.2, 12.9, 27.0, 18.4],  # past its right
            [7.5, 7.5, 8.2, 9.0],
            [2.2, 1.6, 21.0, 17.3],
        ]
    )
    regions = [(1, 11, 2, 13), (0, 18, 0, 5), (11, 18, 13, 26), (6, 10, 6, 10), (0, 18, 1, 22)]
    pasted = paste_masks(masks, boxes, (18, 26)).double()
    expected = pasted_by_hand(masks, boxes, 18, 26)
    for n, (top, bottom, left, right) in enumerate(regions):
        inside = torch.zeros(18, 26, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.allclose(pasted[n, 0][inside], expected[n, 0][inside], atol=1e-6)
        assert (pasted[n, 0][~inside] == 0).all() and (expected[n, 0][~inside] < 0.5).all()
    # the large box's neighbouring columns, sampled by the reference only
    assert expected[4, 0, :, 0].max() > 0 and expected[4, 0, :, 22].max() > 0
    assert torch.equal(pasted >= 0.5, expected >= 0.5)


def test_a_full_mask_on_a_whole_pixel_box_pastes_to_exactly_its_pixels():
    """Where torchvision's paste (a padded mask resized to the rounded box) leaves one pixel of
    a 2x2 box at or above 0.5 and blurs the rest past the box."""
    box = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    expected = torch.zeros(1, 1, 5, 5)
    expected[..., 1:3, 1:3] = 1
    assert torch.equal(paste_masks(torch.ones(1, 1, 2, 2), box, (5, 5)), expected)
    corner = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    one_pixel = torch.zeros(1, 1, 5, 5)
    one_pixel[..., 1, 1] = 1
    assert torch.equal(paste_masks(corner, box, (5, 5)), one_pixel)
    assert paste_masks(torch.ones(0, 1, 2, 2), box[:0], (5, 5)).shape == (0, 1, 5, 5)


# --------------------------------------------------------------------------- COCO AP


def write_truth(tmp_path: Path, objects: list[tuple[int, list[float], int]]) -> Path:
    """A COCO instances file of two 40x40 images with square ``(image, [x, y, w, h], crowd)``
    objects of category 1 (masks: the squares)."""
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 40} for i in (1, 2)],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {
                "id": n + 1,
                "image_id": image,
                "category_id": 1,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": crowd,
                "segmentation": [square(box)],
            }
            for n, (image, box, crowd) in enumerate(objects)
        ],
    }
    (tmp_path / "images").mkdir(exist_ok=True)
    for i in (1, 2):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(b"")
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(data))
    return path


def square(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def detection(boxes: list[list[float]], scores: list[float]) -> dict[str, torch.Tensor]:
    """Detections of class 0 with the squares as masks (probability 1 inside)."""
    masks = torch.zeros(len(boxes), 1, 40, 40)
    for i, (x, y, w, h) in enumerate(boxes):
        masks[i, 0, int(y) : int(y + h), int(x) : int(x + w)] = 1
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes]).reshape(-1, 4)
    return {
        "boxes": xyxy,
        "scores": torch.tensor(scores),
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
        "masks": masks,
    }


def test_perfect_detections_and_masks_score_100(tmp_path):
    path = write_truth(tmp_path, [(1, [4, 4, 20, 20], 0), (2, [10, 8, 12, 16], 0)])
    dataset = read_coco(path, tmp_path / "images")
    found = [detection([[4, 4, 20, 20]], [0.9]), detection([[10, 8, 12, 16]], [0.8])]
    scores = coco_detection_ap(dataset, path, found)
    for kind in ("box", "mask"):
        assert scores[kind]["AP"] == scores[kind]["AP50"] == scores[kind]["AP75"] == 100.0
        assert scores[kind]["APs"] == 100.0 and scores[kind]["APl"] is None  # no large objects


def test_a_miss_gives_51_of_101_recall_points_and_a_higher_false_positive_halves_them(tmp_path):
    """Two cats, one found: precision 1 up to recall 0.5 (51 of COCO's 101 points) and none
    beyond; a false positive scored above the hit makes that precision 1/2."""
    path = write_truth(tmp_path, [(1, [4, 4, 20, 20], 0), (2, [10, 8, 12, 16], 0)])
    dataset = read_coco(path, tmp_path / "images")
    found = [detection([[4, 4, 20, 20]], [0.9]), detection([], [])]
    for kind, values in coco_detection_ap(dataset, path, found).items():
        assert values["AP"] == pytest.approx(100 * 51 / 101), kind
    found[1] = detection([[26, 26, 10, 10]], [0.95])  # far from the cat of image 2
    for kind, values in coco_detection_ap(dataset, path, found).items():
        assert values["AP"] == pytest.approx(100 * 0.5 * 51 / 101), kind


def test_a_detection_on_a_crowd_region_is_not_a_false_positive(tmp_path):
    path = write_truth(tmp_path, [(1, [4, 4, 12, 12], 0), (1, [20, 20, 18, 18], 1)])
    dataset = read_coco(path, tmp_path / "images")
    found = [detection([[20, 20, 18, 18], [4, 4, 12, 12]], [0.99, 0.5]), detection([], [])]
    assert coco_detection_ap(dataset, path, found)["box"]["AP"] == 100.0
    path2 = write_truth(tmp_path, [(1, [4, 4, 12, 12], 0), (1, [20, 20, 18, 18], 0)])
    both = coco_detection_ap(read_coco(path2, tmp_path / "images"), path2, [found[0], found[1]])
    assert both["box"]["AP"] == 100.0  # the same detections count as hits when not crowd
    found[0] = detection([[2, 2, 4, 4], [4, 4, 12, 12]], [0.99, 0.5])
    assert coco_detection_ap(dataset, path, found)["box"]["AP"] < 100.0  # elsewhere: a miss


def test_masks_are_encoded_where_found_as_coco_rles_of_the_half_threshold():
    found = detection([[4, 4, 20, 20]], [0.9])
    found["masks"][0, 0, 0, 0] = 0.5
    found["masks"][0, 0, 5, 5] = 0.49
    encoded = encode_masks(found)
    assert "masks" not in encoded and len(encoded["rles"]) == 1
    decoded = rle_to_mask(encoded["rles"][0])
    assert np.array_equal(decoded, (found["masks"][0, 0] >= 0.5).numpy())
    assert isinstance(encoded["rles"][0]["counts"], str)


# --------------------------------------------------------------------------- items and data


def test_coco_items_leave_out_crowds_and_carry_polygons_or_bit_masks(coco):
    train = read_coco(coco / "annotations/instances_train2017.json", coco / "train2017")
    crowd_image, rle_image = train.images[0], train.images[1]
    assert crowd_image.crowd().any()
    _, target = CocoDetectionImages([crowd_image], flip_prob=0.0)[0]
    kept = [o for o in crowd_image.objects if not o.crowd]
    assert target["labels"].tolist() == [o.label + 1 for o in kept]
    assert "masks" not in target and len(unpack_polygons(target)) == len(kept)
    picture, target = CocoDetectionImages([rle_image], flip_prob=0.0)[0]
    assert target["masks"].shape == (len(rle_image.objects), *picture.shape[-2:])
    assert target["masks"][-1, :10, :12].all() and target["masks"][-1].sum() == 120
    flipped_picture, flipped = CocoDetectionImages([rle_image], flip_prob=1.0)[0]
    assert torch.equal(flipped_picture, picture.flip(-1))
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))


def test_flipped_polygons_rasterise_to_the_flipped_mask(coco):
    image = read_coco(coco / "annotations/instances_val2017.json", coco / "val2017").images[0]
    _, plain = CocoDetectionImages([image], flip_prob=0.0)[0]
    _, mirrored = CocoDetectionImages([image], flip_prob=1.0)[0]
    for a, b in zip(unpack_polygons(plain), unpack_polygons(mirrored), strict=True):
        reference = polygons_to_mask(a, image.height, image.width)[:, ::-1]
        overlap = (polygons_to_mask(b, image.height, image.width) & reference).sum()
        assert overlap / reference.sum() > 0.95  # the rasteriser rounds x -> w - x sub-pixel
    box, flipped_box = plain["boxes"][0], mirrored["boxes"][0]
    assert torch.allclose(
        flipped_box, torch.stack([image.width - box[2], box[1], image.width - box[0], box[3]])
    )


def test_training_images_without_a_non_crowd_object_are_left_out(coco, tmp_path):
    data = read_task_data(COCO_C4_1X, coco)
    assert len(data.train) == 24 and len(data.test) == 8 and data.classes == ("cat", "dog")
    files = json.loads((coco / "annotations/instances_train2017.json").read_text())
    only_crowd = {a["image_id"] for a in files["annotations"] if a["iscrowd"]}
    for a in files["annotations"]:
        if a["image_id"] in only_crowd:
            a["iscrowd"] = 1
    changed = tmp_path / "coco"
    (changed / "annotations").mkdir(parents=True)
    (changed / "train2017").symlink_to(coco / "train2017")
    (changed / "val2017").symlink_to(coco / "val2017")
    (changed / "annotations/instances_train2017.json").write_text(json.dumps(files))
    val = json.loads((coco / "annotations/instances_val2017.json").read_text())
    (changed / "annotations/instances_val2017.json").write_text(json.dumps(val))
    assert len(read_task_data(COCO_C4_1X, changed).train) == 23
    val["categories"] = val["categories"][:1]
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] == 1]
    (changed / "annotations/instances_val2017.json").write_text(json.dumps(val))
    with pytest.raises(CocoError, match="instances_val2017.json: its categories"):
        read_task_data(COCO_C4_1X, changed)


# --------------------------------------------------------------------------- a run


@pytest.mark.slow
@pytest.mark.parametrize("task", [COCO_C4_1X, COCO_FPN_1X], ids=lambda t: t.name)
def test_a_coco_run_reports_box_and_mask_ap_of_the_tested_detector(task, coco, tmp_path, capsys):
    out = tmp_path / "run"
    main(
        [
            "transfer", "--task", task.name, "--checkpoint", "random", "--backbone",
            "resnet18", "--data.root", str(coco), "--out", str(out), "--batch-size", "2",
            "--iterations", "6", "--train-sizes", "64", "80", "--max-size", "120",
            "--roi-batch", "16", "--test-proposals", "20", "--precise-bn-iterations", "2",
            "--device", "cpu", "--precision", "32-true", "--workers", "0", "--no-progress",
        ]
    )  # fmt: skip
    result = json.loads(Path(f"{out}.json").read_text())
    assert result["task"] == task.name and result["train_images"] == 24
    assert set(result["box"]) == set(result["mask"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert result["AP"] == result["box"]["AP"] and "mask AP" in capsys.readouterr().out
    assert "mask AP" in transfer_text(result)

    torch.manual_seed(0)
    small = configure(task, train_sizes=(64, 80), max_size=120, roi_batch=16, test_proposals=20)
    detector = build_detector(small, torchvision.models.resnet18(), 2)
    detector.load_state_dict(torch.load(out / "detector.pth", weights_only=True))
    detector.eval()
    data = read_task_data(task, coco)
    items = CocoDetectionImages(data.test, flip_prob=0.0, masks=False)
    with torch.no_grad():
        found = [detector([items[i][0]])[0] for i in range(len(items))]
    found = [{**f, "labels": f["labels"] - 1} for f in found]
    expected = coco_detection_ap(data.scoring.dataset, data.scoring.annotation_file, found)
    assert {"box": result["box"], "mask": result["mask"]} == expected


# --------------------------------------------------------------------------- R50-FPN


def test_the_fpn_task_is_base_rcnn_fpns_1x_with_batchnorm_everywhere():
    s, solver = COCO_FPN_1X.settings, COCO_FPN_1X.solver
    assert (solver.iterations, solver.steps, solver.warmup_iterations) == (
        90000,
        (60000, 80000),
        1000,
    )
    assert (s.rpn_pre_nms_train, s.rpn_post_nms_train) == (2000, 1000)  # per level, per image
    assert (s.rpn_pre_nms_test, s.rpn_post_nms_test) == (1000, 1000)
    assert (s.pooler_resolution, s.mask_pooler_resolution, s.size_divisibility) == (7, 14, 32)
    assert s.train_sizes == (640, 672, 704, 736, 768, 800) and s.test_size == 800
    assert COCO_FPN_1X.masks and COCO_FPN_1X.detector == "fpn"
    resnet = torchvision.models.resnet18()
    model = build_detector(COCO_FPN_1X, resnet, 80)
    heads = model.roi_heads
    assert isinstance(heads, FpnMaskHeads)

    def norms(module: torch.nn.Module) -> int:
        return sum(type(m) is torch.nn.BatchNorm2d for m in module.modules())

    assert norms(model.backbone.fpn) == 8  # 4 lateral + 4 output convolutions
    assert norms(heads.box_head) == 4 and norms(heads.mask_head_fpn) == 4
    assert not any("Frozen" in type(m).__name__ for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    body = model.backbone.body
    for name, value in resnet.state_dict().items():
        if not name.startswith("fc"):
            assert torch.equal(body.state_dict()[name], value), name
    assert model.rpn.head.conv[0][0].out_channels == 256 and len(model.rpn.head.conv) == 1
    assert heads.mask_head_fpn[1].predictor.out_channels == 80
    assert heads.box_predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_fpn_regions_are_pooled_aligned_from_their_level():
    """A region of side s comes from P(floor(4 + log2(s / 224))), clamped to P2-P5, with the
    half-pixel alignment (torchvision's own pooler is unaligned)."""
    torch.manual_seed(0)
    features = {str(i): torch.randn(1, 3, 64 // 2**i, 64 // 2**i) for i in range(4)}  # P2-P5
    pool = AlignedLevelRoIAlign(["0", "1", "2", "3"], 7, 0)
    boxes = torch.tensor(
        [[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 122.0, 122.0], [0.0, 0.0, 240.0, 240.0]]
    )  # sides 20 (P2, clamped), 112 (P3), 240 (P4)
    pooled = pool(features, [boxes], [(256, 256)])
    for row, (box, level) in enumerate(zip(boxes, (0, 1, 2), strict=True)):
        scale = 1 / 2 ** (level + 2)
        expected = roi_align(features[str(level)], [box[None]], 7, scale, 0, aligned=True)
        assert torch.allclose(pooled[row], expected[0]), row
    unaligned = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 0)
    assert not torch.allclose(unaligned(features, [boxes], [(256, 256)]), pooled)


def test_the_fpn_mask_head_trains_on_28px_targets_and_tests_masks_in_the_image():
    torch.manual_seed(0)
    settings = FpnSettings(
        train_sizes=(64, 96), test_size=96, max_size=160, roi_batch=16, rpn_post_nms_test=20
    )
    model = mask_rcnn_fpn(torchvision.models.resnet18(), 2, settings)
    sizes: list[int] = []
    model.roi_heads.mask_head_fpn.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    images, targets = tiny_batch()
    model.train()
    losses = model(images, targets)
    assert "loss_mask" in losses and sizes == [28]
    losses["loss_mask"].backward()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        found = model(images)
    assert found[0]["masks"].shape == (len(found[0]["boxes"]), 1, 60, 80)
