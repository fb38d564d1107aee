"""The transfer protocols ``contrastlab transfer --task`` runs, with the papers' settings, and
the smaller settings a user may ask for instead (never the defaults)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from contrastlab.transfer.detectors import C4Settings
from contrastlab.transfer.mask_rcnn import FpnSettings
from contrastlab.transfer.solver import DetectionSolver
from contrastlab.transfer.voc import TEST_SPLITS, TRAIN_SPLITS


@dataclass(frozen=True)
class TransferTask:
    """A protocol: the detector's settings, the solver, the splits it trains and tests on (VOC:
    ``(year, split)``; COCO: ``(annotation file, image folder)`` under the root), whether the
    detector predicts masks, and what it reproduces (the papers' numbers and their sources)."""

    name: str
    settings: C4Settings
    solver: DetectionSolver
    train_splits: tuple[tuple[str, str], ...]
    test_splits: tuple[tuple[str, str], ...]
    reproduces: str
    dataset: str = "voc"
    masks: bool = False
    detector: str = "c4"


VOC_C4 = TransferTask(
    name="voc-c4",
    settings=C4Settings(),
    solver=DetectionSolver(),
    train_splits=TRAIN_SPLITS,
    test_splits=TEST_SPLITS,
    reproduces=(
        "Faster R-CNN R50-C4 on VOC07+12 trainval, tested on VOC07 test, 24k iterations of 16 "
        "images (facebookresearch/moco detection/configs/pascal_voc_R_50_C4_24k_moco.yaml): "
        "after 200 epochs MoCo v2 82.4 AP50 / 57.0 AP / 63.6 AP75 and SynCo 82.6 / 57.2 / 63.9, "
        "after 800 epochs 82.5 / 57.4 / 64.0 and 82.8 / 57.4 / 64.0 (giakoumoglou/synco "
        "detection/README.md; SynCo's configs use lr 0.01: --lr 0.01), means of 5 trials"
    ),
)

COCO_TRAIN = (("annotations/instances_train2017.json", "train2017"),)
COCO_TEST = (("annotations/instances_val2017.json", "val2017"),)
COCO_C4_SETTINGS = C4Settings(train_sizes=tuple(range(640, 801, 32)), test_size=800)
"""coco_R_50_C4_2x.yaml: MIN_SIZE_TRAIN (640, 672, ..., 800), MIN_SIZE_TEST 800."""
COCO_C4_SOURCE = (
    "Mask R-CNN R50-C4 on COCO train2017, tested on val2017 (facebookresearch/moco "
    "detection/configs/coco_R_50_C4_2x.yaml; giakoumoglou/synco coco_R_50_C4_{1x,2x}_synco.yaml, "
    "whose lr is 0.01: --lr 0.01): box and mask AP; SynCo's abstract reports +1.0 box AP and "
    "+0.8 mask AP over MoCo v2 on COCO"
)


def coco_c4(name: str, iterations: int, steps: tuple[int, int]) -> TransferTask:
    """A COCO Mask R-CNN C4 schedule: detectron2's default warm-up (1,000 iterations; the COCO
    configs keep it) and the given length and lr steps."""
    return TransferTask(
        name=name,
        settings=COCO_C4_SETTINGS,
        solver=DetectionSolver(iterations=iterations, steps=steps, warmup_iterations=1000),
        train_splits=COCO_TRAIN,
        test_splits=COCO_TEST,
        reproduces=f"{COCO_C4_SOURCE}; {iterations:,} iterations of 16 images",
        dataset="coco",
        masks=True,
    )


COCO_C4_1X = coco_c4("coco-c4-1x", 90000, (60000, 80000))
COCO_C4_2X = coco_c4("coco-c4-2x", 180000, (120000, 160000))

COCO_FPN_1X = TransferTask(
    name="coco-fpn-1x",
    settings=FpnSettings(),
    solver=DetectionSolver(iterations=90000, steps=(60000, 80000), warmup_iterations=1000),
    train_splits=COCO_TRAIN,
    test_splits=COCO_TEST,
    reproduces=(
        "Mask R-CNN R50-FPN on COCO train2017, tested on val2017, 90k iterations of 16 images "
        "(detectron2 Base-RCNN-FPN.yaml's 1x schedule) with SyncBN in the backbone, the FPN and "
        "both heads and a 4-conv-1-fc box head (the layers of detectron2's "
        "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml): the protocol of DenseCL and mmselfsup's "
        "detection benchmark; box and mask AP"
    ),
    dataset="coco",
    masks=True,
    detector="fpn",
)

TASKS: dict[str, TransferTask] = {t.name: t for t in (VOC_C4, COCO_C4_1X, COCO_C4_2X, COCO_FPN_1X)}


def scaled_steps(solver: DetectionSolver, iterations: int) -> tuple[int, ...]:
    """The lr steps moved to ``iterations`` at the protocol's fractions (18k and 22k of 24k:
    3/4 and 11/12), each at least 1 and increasing."""
    steps = [max(1, round(s * iterations / solver.iterations)) for s in solver.steps]
    return tuple(sorted({min(s, iterations - 1) for s in steps if iterations > 1}))


def configure(
    task: TransferTask,
    iterations: int | None = None,
    lr: float | None = None,
    train_sizes: tuple[int, ...] | None = None,
    max_size: int | None = None,
    precise_bn_iterations: int | None = None,
    roi_batch: int | None = None,
    test_proposals: int | None = None,
    warmup_iterations: int | None = None,
) -> TransferTask:
    """``task`` with smaller settings: ``iterations`` (the lr steps keep their fractions of the
    run and the warm-up is cut to the run when longer; ``warmup_iterations`` sets it), the
    ``lr`` for the protocol's 16 images,
    the training sizes (shorter side; the test size is the largest, as the protocol's 800 of
    480-800), the longer-side cap, the precise-BN batches, and the two settings that set a
    C4 detector's cost (every region runs through res5): the regions sampled per training image
    (512) and the proposals kept per test image (1000)."""
    solver, settings = task.solver, task.settings
    if iterations is not None:
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        solver = replace(
            solver,
            iterations=iterations,
            steps=scaled_steps(solver, iterations),
            warmup_iterations=min(solver.warmup_iterations, iterations),
        )
    if lr is not None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        solver = replace(solver, lr=lr)
    if warmup_iterations is not None:
        if not 0 <= warmup_iterations <= solver.iterations:
            raise ValueError(
                f"warm-up iterations must lie in [0, {solver.iterations}], got {warmup_iterations}"
            )
        solver = replace(solver, warmup_iterations=warmup_iterations)
    if precise_bn_iterations is not None:
        if precise_bn_iterations < 0:
            raise ValueError(f"precise-BN iterations must be >= 0, got {precise_bn_iterations}")
        solver = replace(solver, precise_bn_iterations=precise_bn_iterations)
    if train_sizes is not None or max_size is not None:
        sizes = tuple(sorted(set(train_sizes or settings.train_sizes)))
        longest = max_size or settings.max_size
        if sizes[0] < 32 or longest < sizes[-1]:
            raise ValueError(
                f"training sizes {sizes} must be >= 32 px and within the longer-side cap {longest}"
            )
        settings = replace(settings, train_sizes=sizes, test_size=sizes[-1], max_size=longest)
    for name, value in (("roi_batch", roi_batch), ("rpn_post_nms_test", test_proposals)):
        if value is not None:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
            settings = replace(settings, **{name: value})
    return replace(task, solver=solver, settings=settings)
