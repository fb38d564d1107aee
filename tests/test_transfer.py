"""Detection transfer: the VOC reader on a devkit the tests write in the official layout, every
malformed annotation refused by name, and VOC AP against values worked out by hand."""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import roi_align

from contrastlab.data.errors import DatasetError
from contrastlab.transfer.coco import CocoError, read_coco
from contrastlab.transfer.data import DetectionImages
from contrastlab.transfer.detectors import (
    AlignedRoIPool,
    C4Settings,
    DetectronBoxHeads,
    DetectronRPN,
    box_losses,
    faster_rcnn_c4,
    rpn_losses,
)
from contrastlab.transfer.metrics import (
    RECALL_POINTS,
    area_ap,
    class_ap,
    class_detections,
    eleven_point_ap,
    pixel_iou,
    voc_detection_ap,
)
from contrastlab.transfer.solver import DetectionSolver, lr_factor, precise_bn, sgd
from contrastlab.transfer.voc import (
    TEST_SPLITS,
    TRAIN_SPLITS,
    VOC_CLASSES,
    VocError,
    VocImage,
    VocObject,
    read_voc,
)

# --------------------------------------------------------------------------- a devkit


def write_annotation(
    folder: Path,
    image_id: str,
    objects: list[dict],
    size: tuple[int, int] = (64, 48),
) -> Path:
    """One ``Annotations/<id>.xml`` as the devkit writes it, and its JPEG."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size_element = ET.SubElement(root, "size")
    for name, value in zip(("width", "height", "depth"), (*size, 3), strict=True):
        ET.SubElement(size_element, name).text = str(value)
    for spec in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = spec["name"]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        if "difficult" in spec:
            ET.SubElement(obj, "difficult").text = str(spec["difficult"])
        box = ET.SubElement(obj, "bndbox")
        for name, value in zip(("xmin", "ymin", "xmax", "ymax"), spec["box"], strict=True):
            ET.SubElement(box, name).text = str(value)
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
    path = folder / "Annotations" / f"{image_id}.xml"
    ET.ElementTree(root).write(path)
    Image.new("RGB", size, (90, 120, 30)).save(folder / "JPEGImages" / f"{image_id}.jpg")
    return path


def write_split(folder: Path, split: str, ids: list[str]) -> None:
    (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


@pytest.fixture
def devkit(tmp_path: Path) -> Path:
    """VOC2007 (trainval: 2 images, test: 1) and VOC2012 (trainval: 1 image)."""
    root = tmp_path / "VOCdevkit"
    voc07, voc12 = root / "VOC2007", root / "VOC2012"
    write_annotation(voc07, "000005", [{"name": "chair", "box": (1, 2, 30, 40), "difficult": 0}])
    write_annotation(
        voc07,
        "000007",
        [
            {"name": "car", "box": (5, 6, 64, 48), "difficult": 1},
            {"name": "person", "box": (10, 10, 20, 20), "difficult": 0},
        ],
    )
    write_annotation(voc07, "000001", [{"name": "dog", "box": (1, 1, 64, 48), "difficult": 0}])
    write_annotation(voc12, "2008_000008", [{"name": "horse", "box": (3, 4, 50, 44)}])
    write_split(voc07, "trainval", ["000005", "000007"])
    write_split(voc07, "test", ["000001"])
    write_split(voc12, "trainval", ["2008_000008"])
    return root


def test_voc07_and_12_trainval_read_in_split_order_with_flags_and_boxes(devkit):
    images = read_voc(devkit, TRAIN_SPLITS)
    assert [(i.year, i.image_id) for i in images] == [
        ("2007", "000005"),
        ("2007", "000007"),
        ("2012", "2008_000008"),
    ]
    second = images[1]
    assert (second.width, second.height) == (64, 48)
    assert second.path == devkit / "VOC2007" / "JPEGImages" / "000007.jpg"
    assert [VOC_CLASSES[o.label] for o in second.objects] == ["car", "person"]
    assert second.difficult().tolist() == [True, False]
    # the XML's 1-based inclusive pixels -> continuous 0-based boxes (xmin - 1, ymin - 1, ...)
    assert second.boxes().tolist() == [[4, 5, 64, 48], [9, 9, 20, 20]]
    assert images[2].objects[0].difficult is False  # no <difficult>: 0, as VOC2012's objects
    test = read_voc(devkit, TEST_SPLITS)
    assert [i.image_id for i in test] == ["000001"]
    assert test[0].boxes().tolist() == [[0, 0, 64, 48]]  # the whole 64x48 image


def break_object(devkit: Path, spec: dict) -> None:
    write_annotation(devkit / "VOC2007", "000005", [{"name": "chair", "box": (1, 2, 30, 40)}, spec])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "kitten", "box": (1, 1, 5, 5)}, "object 1 (kitten): class 'kitten' is not one"),
        ({"name": "cat", "box": (1, 1, "x", 5)}, "object 1 (cat): <xmax> is 'x', not a number"),
        ({"name": "cat", "box": (1, 1, 5, "nan")}, "<ymax> is 'nan', not a finite number"),
        ({"name": "cat", "box": (9, 1, 5, 5)}, "box (xmin 9, ymin 1, xmax 5, ymax 5) is not"),
        ({"name": "cat", "box": (1, 1, 65, 5)}, "is not inside the 64x48 image"),
        ({"name": "cat", "box": (1, 1, 5, 5), "difficult": 2}, "<difficult> is '2'; expected"),
    ],
)
def test_a_malformed_object_is_refused_naming_file_object_and_fault(devkit, spec, message):
    break_object(devkit, spec)
    with pytest.raises(VocError) as error:
        read_voc(devkit, TRAIN_SPLITS)
    assert str(error.value).startswith(str(devkit / "VOC2007" / "Annotations" / "000005.xml"))
    assert message in str(error.value)


def test_missing_files_sizes_and_bad_xml_are_refused_by_name(devkit):
    voc07 = devkit / "VOC2007"
    (voc07 / "JPEGImages" / "000007.jpg").unlink()
    with pytest.raises(VocError, match=r"000007\.jpg: image file not found"):
        read_voc(devkit, TRAIN_SPLITS)
    write_split(voc07, "trainval", ["000005", "000099"])
    with pytest.raises(VocError, match=r"000099\.xml: annotation file not found"):
        read_voc(devkit, TRAIN_SPLITS)
    write_split(voc07, "trainval", ["000005", "000005"])
    with pytest.raises(VocError, match=r"trainval\.txt: image ids listed twice: 000005"):
        read_voc(devkit, TRAIN_SPLITS)
    with pytest.raises(VocError, match=r"VOC2007/ImageSets/Main/val\.txt: split file not found"):
        read_voc(devkit, [("2007", "val")])
    write_split(voc07, "trainval", ["000005"])
    path = voc07 / "Annotations" / "000005.xml"
    path.write_text(path.read_text().replace("<width>64</width>", "<width>6.5</width>"))
    with pytest.raises(VocError, match=r"000005\.xml: <size><width> is '6\.5', not a whole"):
        read_voc(devkit, TRAIN_SPLITS)
    path.write_text("<annotation><size>")
    with pytest.raises(VocError, match=r"000005\.xml: not valid XML"):
        read_voc(devkit, TRAIN_SPLITS)
    with pytest.raises(VocError, match="no such folder"):
        read_voc(devkit / "nowhere")


def test_the_old_detector_name_still_imports_with_a_warning():
    import contrastlab.transfer as transfer
    from contrastlab.models.exported import faster_rcnn_from_export

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert transfer.faster_rcnn_from_export is faster_rcnn_from_export
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


# --------------------------------------------------------------------------- VOC AP


CLASSES = ("cat", "dog")
CAT = ("cat",)  # the same label 0: a one-class evaluation of the cats


def image(image_id: str, *objects: tuple[str, tuple[int, int, int, int], bool]) -> VocImage:
    """An image of 200 x 200 with ``(class, XML box, difficult)`` objects."""
    made = tuple(VocObject(CLASSES.index(c), box, d) for c, box, d in objects)
    return VocImage("2007", image_id, Path(f"{image_id}.jpg"), 200, 200, made)


def detections(*found: tuple[str, tuple[float, float, float, float], float]) -> dict:
    """A detector's output: ``(class, XML box, score)`` turned into its 0-based boxes."""
    boxes = [(x0 - 1, y0 - 1, x1, y1) for _, (x0, y0, x1, y1), _ in found]
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor([s for *_, s in found]),
        "labels": torch.tensor([CLASSES.index(c) for c, *_ in found], dtype=torch.int64),
    }


def test_perfect_detections_score_100_at_every_threshold():
    images = [
        image("a", ("cat", (1, 1, 100, 100), False), ("dog", (50, 60, 150, 190), False)),
        image("b", ("cat", (20, 30, 40, 50), False)),
    ]
    found = [
        detections(("cat", (1, 1, 100, 100), 0.9), ("dog", (50, 60, 150, 190), 0.8)),
        detections(("cat", (20, 30, 40, 50), 0.7)),
    ]
    result = voc_detection_ap(images, found, classes=CLASSES)
    assert (result["AP"], result["AP50"], result["AP75"]) == (100.0, 100.0, 100.0)


def test_a_miss_and_a_false_positive_give_six_of_eleven_points():
    """Two cats; the best detection finds one, the next is elsewhere, the second cat is missed:
    recall 1/2, 1/2 at precision 1, 1/2. Points r = 0 ... 0.5 reach precision 1: 6/11."""
    images = [
        image("a", ("cat", (1, 1, 100, 100), False)),
        image("b", ("cat", (1, 1, 50, 50), False)),
    ]
    found = [
        detections(("cat", (1, 1, 100, 100), 0.9), ("cat", (120, 120, 190, 190), 0.8)),
        detections(),
    ]
    result = voc_detection_ap(images, found, classes=CAT)
    assert result["AP50"] == pytest.approx(100 * 6 / 11)
    assert result["AP"] == pytest.approx(100 * 6 / 11)  # an exact box: every threshold alike
    # the area under the curve (VOC2010+): 0.5 x 1 + 0.5 x 0
    assert voc_detection_ap(images, found, classes=CAT, use_07_metric=False)["AP50"] == 50.0


def test_an_overlap_of_six_tenths_counts_at_050_and_055_only():
    """Cat (1, 1, 100, 100) is 100 x 100 pixels; the detection (1, 1, 100, 60) covers 100 x 60
    of them: IoU 0.6, a hit while 0.6 > t: t = 0.50, 0.55 (0.60 is not exceeded). AP is the
    mean over ten thresholds: 2 x 100 / 10 = 20; AP50 100; AP75 0."""
    images = [image("a", ("cat", (1, 1, 100, 100), False))]
    found = [detections(("cat", (1, 1, 100, 60), 0.9))]
    assert pixel_iou(np.array([1, 1, 100, 60.0]), np.array([[1, 1, 100, 100.0]]))[0] == 0.6
    result = voc_detection_ap(images, found, classes=CAT)
    assert (result["AP"], result["AP50"], result["AP75"]) == (20.0, 100.0, 0.0)


def test_pixel_overlap_counts_inclusive_pixels():
    """(1, 1, 2, 2) is 2 x 2 = 4 pixels; (2, 2, 3, 3) shares pixel (2, 2): 1 / (4 + 4 - 1)."""
    iou = pixel_iou(np.array([1, 1, 2, 2.0]), np.array([[2, 2, 3, 3.0], [5, 5, 6, 6.0]]))
    assert iou.tolist() == [1 / 7, 0.0]


def test_difficult_boxes_are_neither_found_nor_missed_and_duplicates_are_false():
    """Two cats, the second difficult. Detections by score: the difficult one (ignored), the
    easy one (true), the easy one again (false: taken). npos = 1: recall 1, 1 at precision
    1, 1/2 -> every point reaches precision 1: AP 100. Without the flag, npos = 2 and the
    difficult box's detection is a true positive first: recall 1/2, 1, 1 at precision 1."""
    easy, hard = (1, 1, 100, 100), (120, 120, 180, 180)
    found = [detections(("cat", hard, 0.95), ("cat", easy, 0.9), ("cat", easy, 0.5))]
    flagged = [image("a", ("cat", easy, False), ("cat", hard, True))]
    assert voc_detection_ap(flagged, found, classes=CAT)["AP50"] == 100.0
    truth = [(np.array([easy, hard], dtype=float), np.array([False, True]))]
    found_once = class_detections(found, 0)
    assert class_ap(truth, found_once, 0.5) == 1.0
    unflagged = [image("a", ("cat", easy, False), ("cat", hard, False))]
    assert voc_detection_ap(unflagged, found, classes=CAT)["AP50"] == 100.0
    # the duplicate ranked first and the easy box missed: a false positive before any true one
    swapped = [detections(("cat", hard, 0.95), ("cat", hard, 0.9))]
    result = voc_detection_ap(unflagged, swapped, classes=CAT)
    assert result["AP50"] == pytest.approx(100 * 6 / 11)  # recall 1/2 at precision 1, then 1/2


def test_a_class_without_boxes_counts_as_zero_in_the_mean():
    images = [image("a", ("cat", (1, 1, 100, 100), False))]
    found = [detections(("cat", (1, 1, 100, 100), 0.9), ("dog", (1, 1, 50, 50), 0.8))]
    result = voc_detection_ap(images, found, classes=CLASSES)
    assert result["AP50_per_class"] == {"cat": 100.0, "dog": 0.0}
    assert result["AP50"] == 50.0


def test_the_recall_points_are_detectron2s_float_steps():
    """np.arange(0, 1.1, 0.1): 0.3 lies above 3/10, so three of ten cats found first (recall
    0.3 at precision 1) reach the points 0, 0.1, 0.2 only: 3/11, not 4/11."""
    assert RECALL_POINTS[3] > 0.3 and len(RECALL_POINTS) == 11
    recall = np.array([0.1, 0.2, 0.3])
    assert eleven_point_ap(recall, np.ones(3)) == pytest.approx(3 / 11)
    cats = [image(str(i), ("cat", (1, 1, 10 + i, 10 + i), False)) for i in range(10)]
    found = [
        detections(("cat", (1, 1, 10 + i, 10 + i), 0.9)) if i < 3 else detections()
        for i in range(10)
    ]
    assert voc_detection_ap(cats, found, classes=CAT)["AP50"] == pytest.approx(100 * 3 / 11)


def test_scores_are_ranked_as_the_evaluator_rounds_them():
    """Scores 0.90004 and 0.9001 round to 0.900 both: a tie that keeps the order the detections
    came in, the false one first. Precision 0 then 1/2 at recall 0 then 1: every point reaches
    1/2, so AP is 1/2 where the unrounded scores would rank the hit first and give 1."""
    found = class_detections(
        [detections(("cat", (150, 150, 190, 190), 0.90004), ("cat", (1, 1, 100, 100), 0.9001))],
        0,
    )
    assert found.score.tolist() == [0.9, 0.9]
    assert found.box.tolist() == [[150, 150, 190, 190], [1, 1, 100, 100]]
    truth = [(np.array([[1, 1, 100, 100.0]]), np.array([False]))]
    assert class_ap(truth, found, 0.5) == pytest.approx(0.5)
    assert area_ap(np.array([0.0, 1.0]), np.array([0.0, 0.5])) == pytest.approx(0.5)


# --------------------------------------------------------------------------- the C4 detector


SMALL = C4Settings(
    train_sizes=(64, 96),
    test_size=96,
    max_size=128,
    rpn_pre_nms_train=200,
    rpn_post_nms_train=64,
    rpn_pre_nms_test=200,
    rpn_post_nms_test=32,
    roi_batch=32,
)
"""Small images and few regions: res5 runs once per region (512 per image by default)."""


def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


def test_the_c4_detector_is_the_resnets_own_layers_all_training():
    resnet = resnet18()
    model = faster_rcnn_c4(resnet, num_classes=20, settings=SMALL)
    trunk, head = model.backbone, model.roi_heads.box_head
    assert [n for n, _ in trunk.named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
    ]
    assert trunk.out_channels == 256 and head.norm.num_features == 512
    for name, value in resnet.state_dict().items():
        target = trunk if not name.startswith(("layer4", "fc")) else None
        if target is not None:
            assert torch.equal(target.state_dict()[name], value), name
        elif name.startswith("layer4"):
            assert torch.equal(head.res5.state_dict()[name[len("layer4.") :]], value), name
    assert head.res5 is not resnet.layer4  # copied: the ResNet given is left alone
    norms = [m for m in model.modules() if "BatchNorm" in type(m).__name__]
    assert norms and all(type(m) is torch.nn.BatchNorm2d for m in norms)  # none frozen
    assert all(p.requires_grad for p in model.parameters())
    predictor = model.roi_heads.box_predictor
    assert predictor.cls_score.out_features == 21 and predictor.bbox_pred.out_features == 84
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert model.rpn.head.cls_logits.out_channels == 15
    assert model.transform.size_divisible == 1  # detectron2's C4: size_divisibility 0


def test_regions_are_pooled_with_half_pixel_alignment():
    features = {"0": torch.randn(1, 4, 12, 12)}
    boxes = [torch.tensor([[8.0, 8.0, 72.0, 100.0]])]
    pooled = AlignedRoIPool(14, stride=16)(features, boxes, [(192, 192)])
    aligned = roi_align(features["0"], boxes, 14, 1 / 16, sampling_ratio=0, aligned=True)
    unaligned = roi_align(features["0"], boxes, 14, 1 / 16, sampling_ratio=0, aligned=False)
    assert torch.equal(pooled, aligned) and not torch.allclose(pooled, unaligned)


def test_a_training_step_reaches_the_stem_and_evaluation_returns_detections():
    model = faster_rcnn_c4(resnet18(), num_classes=2, settings=SMALL)
    images = [torch.rand(3, 60, 80), torch.rand(3, 72, 64)]
    targets = [
        {"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 30.0]]), "labels": torch.tensor([2])},
    ]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.backbone.bn1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}


def test_the_c4_detector_refuses_a_cifar_stem_and_a_test_size_torchvision_cannot_run():
    net = resnet18()
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    with pytest.raises(ValueError, match="CIFAR stem"):
        faster_rcnn_c4(net, num_classes=20, settings=SMALL)
    with pytest.raises(ValueError, match="must be the last of train_sizes"):
        faster_rcnn_c4(resnet18(), 20, C4Settings(train_sizes=(64, 96), test_size=80))


def test_rpn_losses_are_detectron2s_sums_over_the_anchors_it_was_to_sample():
    """Anchors 0..4 labelled positive, negative, ignored, positive, negative; 0, 1, 3 sampled;
    256 per image and 2 images: BCE(x, y) = log(1 + e^x) - x y summed over the sampled, and
    |deltas - targets| over the sampled positives 0 and 3, each divided by 512."""
    x = torch.tensor([0.5, -1.0, 2.0, 1.5, 0.0])
    y = torch.tensor([1.0, 0.0, -1.0, 1.0, 0.0])
    deltas = torch.arange(20.0).reshape(5, 4) / 10
    targets = torch.ones(5, 4)
    objectness, boxes = rpn_losses(x, deltas, y, targets, torch.tensor([0, 1, 3]), 512)
    bce = sum(math.log(1 + math.exp(v)) - v * t for v, t in [(0.5, 1), (-1.0, 0), (1.5, 1)])
    l1 = sum(abs(i / 10 - 1) for i in [0, 1, 2, 3, 12, 13, 14, 15])
    assert objectness.item() == pytest.approx(bce / 512)
    assert boxes.item() == pytest.approx(l1 / 512)


def test_box_losses_take_each_regions_own_class_deltas_over_all_regions():
    """Three regions, labels 2, 0 (background), 1 of three classes with background: the mean
    cross-entropy, and the L1 of region 0's class-2 deltas and region 2's class-1 deltas, / 3."""
    logits = torch.tensor([[0.1, 0.2, 0.3], [1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    regression = torch.arange(36.0).reshape(3, 12) / 36
    labels = torch.tensor([2, 0, 1])
    targets = torch.full((3, 4), 0.5)
    classification, boxes = box_losses(logits, regression, labels, targets)
    log_softmax = logits.log_softmax(1)
    expected_ce = -(log_softmax[0, 2] + log_softmax[1, 0] + log_softmax[2, 1]) / 3
    assert classification.item() == pytest.approx(expected_ce.item())
    chosen = [regression[0, 8:12], regression[2, 4:8]]
    expected_l1 = sum((c - 0.5).abs().sum() for c in chosen) / 3
    assert boxes.item() == pytest.approx(expected_l1.item())


def test_the_detector_trains_on_detectron2s_losses_not_torchvisions():
    """Few anchors: the RPN samples 8 of the 256 per image it may; detectron2 still divides
    by 256 x 2, torchvision by the 8 sampled."""
    model = faster_rcnn_c4(resnet18(), num_classes=2, settings=SMALL)
    assert type(model.rpn) is DetectronRPN and type(model.roi_heads) is DetectronBoxHeads
    labels = [torch.tensor([1.0, 0, 0, -1, 1]), torch.tensor([0.0, 1, -1, 0, 0])]
    objectness = torch.linspace(-1, 1, 10)
    deltas = torch.linspace(0, 1, 40).reshape(10, 4)
    targets = [torch.zeros(5, 4), torch.zeros(5, 4)]
    ours = model.rpn.compute_loss(objectness, deltas, labels, targets)
    torchvisions = RegionProposalNetwork.compute_loss(
        model.rpn, objectness, deltas, labels, targets
    )
    sampled = torch.tensor([0, 1, 2, 4, 5, 6, 8, 9])
    expected = rpn_losses(objectness, deltas, torch.cat(labels), torch.cat(targets), sampled, 512)
    torch.testing.assert_close(torch.stack(ours), torch.stack(expected))
    assert torchvisions[0].item() == pytest.approx(ours[0].item() * 512 / 8)


# --------------------------------------------------------------------------- images and targets


def two_colour_devkit(tmp_path: Path) -> list[VocImage]:
    """One 64 x 48 JPEG, red left half and blue right half, a cat box over the red half."""
    voc07 = tmp_path / "VOCdevkit" / "VOC2007"
    write_annotation(voc07, "000001", [{"name": "cat", "box": (1, 1, 32, 48)}])
    picture = Image.new("RGB", (64, 48), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 32, 48))
    picture.save(voc07 / "JPEGImages" / "000001.jpg", quality=100)
    write_split(voc07, "test", ["000001"])
    return read_voc(tmp_path / "VOCdevkit", TEST_SPLITS)


def test_an_item_is_the_decoded_photo_and_its_targets_flipped_together(tmp_path):
    images = two_colour_devkit(tmp_path)
    picture, target = DetectionImages(images, flip_prob=0.0)[0]
    assert picture.shape == (3, 48, 64) and picture.dtype == torch.float32
    assert target["boxes"].tolist() == [[0, 0, 32, 48]]
    assert target["labels"].tolist() == [VOC_CLASSES.index("cat") + 1]  # 0: background
    assert target["difficult"].tolist() == [False]
    red = torch.tensor([1.0, 0, 0])[:, None, None]
    assert (picture[:, :, 2:30] - red).abs().max() < 0.05  # inside the box: red
    flipped, flipped_target = DetectionImages(images, flip_prob=1.0)[0]
    assert flipped_target["boxes"].tolist() == [[32, 0, 64, 48]]
    assert torch.equal(flipped, picture.flip(-1))
    x0, _, x1, _ = (int(v) for v in flipped_target["boxes"][0])
    assert (flipped[:, :, x0 + 2 : x1 - 2] - red).abs().max() < 0.05  # the box follows the red


def test_flips_are_a_function_of_seed_epoch_and_index_at_the_given_rate():
    """2,000 draws per rate: the count of flips is Binomial(2000, p); 4 standard deviations."""
    entries = [image(str(i)) for i in range(2000)]
    for rate in (0.5, 0.2):
        data = DetectionImages(entries, flip_prob=rate, seed=1)
        count = sum(data.flipped(i) for i in range(2000))
        assert abs(count - 2000 * rate) < 4 * math.sqrt(2000 * rate * (1 - rate)), (rate, count)
    data = DetectionImages(entries, flip_prob=0.5, seed=1)
    first = [data.flipped(i) for i in range(64)]
    assert first == [DetectionImages(entries, 0.5, seed=1).flipped(i) for i in range(64)]
    data.set_epoch(1)
    assert first != [data.flipped(i) for i in range(64)]


def test_a_photo_unlike_its_annotation_is_refused_by_name(tmp_path):
    images = two_colour_devkit(tmp_path)
    Image.new("RGB", (60, 48)).save(images[0].path)
    with pytest.raises(DatasetError, match=r"000001\.jpg"):
        DetectionImages(images)[0]


# --------------------------------------------------------------------------- the solver


def test_the_lr_warms_up_linearly_from_a_thousandth_and_steps_down_at_18k_and_22k():
    solver = DetectionSolver()
    expected = {
        0: 0.001,
        50: 0.001 * 0.5 + 0.5,
        99: 0.001 * 0.01 + 0.99,
        100: 1.0,
        17999: 1.0,
        18000: 0.1,
        21999: 0.1,
        22000: 0.01,
        23999: 0.01,
    }
    for iteration, factor in expected.items():
        assert lr_factor(iteration, solver) == pytest.approx(factor), iteration
    with pytest.raises(ValueError, match="must increase and lie inside"):
        DetectionSolver(steps=(22000, 18000))


def test_normalisation_parameters_are_not_decayed_and_every_parameter_is_in_one_group():
    model = faster_rcnn_c4(resnet18(), num_classes=20, settings=SMALL)
    optimizer = sgd(model, DetectionSolver(), global_batch=8)
    other, norm = optimizer.param_groups
    assert (other["weight_decay"], norm["weight_decay"]) == (1e-4, 0.0)
    assert other["lr"] == pytest.approx(0.01) and other["momentum"] == 0.9  # 0.02 x 8 / 16
    bn = {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    }
    assert {id(p) for p in norm["params"]} == bn
    assert id(model.rpn.head.conv[0][0].bias) in {id(p) for p in other["params"]}  # biases decay
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_precise_bn_is_the_plain_average_of_the_batch_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).eval()
    weights = [p.detach().clone() for p in model.parameters()]
    batches = [torch.randn(8, 3) * s + s for s in (1.0, 2.0, 3.0)]
    used = precise_bn(model, model, batches)
    with torch.no_grad():
        features = [model[0](b) for b in batches]
    mean = torch.stack([f.mean(0) for f in features]).mean(0)
    var = torch.stack([f.var(0, unbiased=True) for f in features]).mean(0)
    assert used == 3
    torch.testing.assert_close(model[1].running_mean, mean)
    torch.testing.assert_close(model[1].running_var, var)
    assert model[1].momentum == 0.1 and not model.training
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    with pytest.raises(ValueError, match="at least one batch"):
        precise_bn(model, model, [])


# --------------------------------------------------------------------------- COCO


def coco_files(tmp_path: Path, annotations: list[dict] | None = None) -> tuple[Path, Path]:
    """An instances JSON in the official form, categories 1, 3 and 7 (ids with gaps)."""
    root = tmp_path / "train2017"
    root.mkdir(parents=True, exist_ok=True)
    for name, size in (("000000000009.jpg", (64, 48)), ("000000000025.jpg", (40, 30))):
        Image.new("RGB", size).save(root / name)
    data = {
        "images": [
            {"id": 25, "file_name": "000000000025.jpg", "width": 40, "height": 30},
            {"id": 9, "file_name": "000000000009.jpg", "width": 64, "height": 48},
        ],
        "categories": [
            {"id": 7, "name": "train"},
            {"id": 1, "name": "person"},
            {"id": 3, "name": "car"},
        ],
        "annotations": annotations
        if annotations is not None
        else [
            {
                "id": 101,
                "image_id": 9,
                "category_id": 3,
                "bbox": [2.5, 4.0, 10.0, 20.0],
                "iscrowd": 0,
                "segmentation": [[2.5, 4, 12.5, 4, 12.5, 24, 2.5, 24], [1, 1, 2, 2]],
            },
            {
                "id": 102,
                "image_id": 9,
                "category_id": 7,
                "bbox": [0, 0, 64, 48],
                "iscrowd": 1,
                "segmentation": {"size": [48, 64], "counts": [0, 3072]},
            },
            {
                "id": 103,
                "image_id": 25,
                "category_id": 1,
                "bbox": [1, 1, 5, 5],
                "iscrowd": 0,
                "segmentation": [[1, 1, 6, 1, 6]],  # odd: dropped, and the object with it
            },
        ],
    }
    path = tmp_path / "annotations" / "instances_train2017.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path, root


def test_coco_is_read_in_image_id_order_with_contiguous_labels_and_detectron2s_filter(tmp_path):
    dataset = read_coco(*coco_files(tmp_path))
    assert dataset.classes == ("person", "car", "train") and dataset.category_ids == (1, 3, 7)
    assert [i.image_id for i in dataset.images] == [9, 25]
    first = dataset.images[0]
    assert (first.width, first.height) == (64, 48) and first.path.name == "000000000009.jpg"
    assert first.labels().tolist() == [1, 2]  # car, train
    assert first.boxes().tolist() == [[2.5, 4.0, 12.5, 24.0], [0.0, 0.0, 64.0, 48.0]]
    assert first.crowd().tolist() == [False, True]
    (polygon,) = first.objects[0].segmentation  # float64 arrays: compact, as read
    assert polygon.dtype == np.float64
    assert polygon.tolist() == [2.5, 4.0, 12.5, 4.0, 12.5, 24.0, 2.5, 24.0]
    assert first.objects[1].segmentation == {"size": [48, 64], "counts": [0, 3072]}
    assert dataset.images[1].objects == () and dataset.dropped_objects == 1


def one_annotation(**changes) -> list[dict]:
    entry = {"id": 5, "image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0}
    return [{**entry, **changes}]


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (one_annotation(image_id=4), "annotation 5: image_id 4 is not an image of the file"),
        (one_annotation(category_id=2), "annotation 5 (image 9): category_id 2 is not a"),
        (one_annotation(bbox=[1, 2, 3]), "bbox is [1, 2, 3]; expected [x, y, width, height]"),
        (one_annotation(bbox=[1, 2, -3, 4]), "has a negative width or height"),
        (one_annotation(bbox=[1, 2, "3", 4]), "not a finite number"),
        (one_annotation(iscrowd=2), "iscrowd is 2; expected 0 or 1"),
        (one_annotation(ignore=1), '"ignore" is set'),
        (
            one_annotation(segmentation={"size": [30, 40], "counts": "abc"}),
            "RLE size [30, 40] is not the image's [48, 64]",
        ),
        (one_annotation(segmentation=[[1, 2, 3, "x", 5, 6]]), "a polygon holds something"),
        (one_annotation() * 2, "annotation ids listed twice: 5"),
    ],
)
def test_a_malformed_coco_annotation_is_refused_by_file_and_id(tmp_path, annotations, message):
    path, root = coco_files(tmp_path, annotations)
    with pytest.raises(CocoError) as error:
        read_coco(path, root)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_missing_coco_files_and_bad_json_are_refused_by_name(tmp_path):
    path, root = coco_files(tmp_path)
    (root / "000000000025.jpg").unlink()
    with pytest.raises(CocoError, match=r"000000000025\.jpg: image file not found \(image 25"):
        read_coco(path, root)
    path.write_text("{")
    with pytest.raises(CocoError, match="not valid JSON"):
        read_coco(path, root)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(CocoError, match='no "annotations" list'):
        read_coco(path, root)
