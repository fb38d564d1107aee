"""Linear probe on a frozen backbone: the paper protocol and a fast mode on cached features.

Both train one ``nn.Linear`` with SGD (momentum 0.9, no weight decay) and a step schedule
(x0.1 at 60% and 80% of the epochs, as 60/80 of 100), and evaluate top-1/top-5 on the
evaluation split's centre-view features after every epoch. The number reported is the last
epoch's; the best epoch is recorded as an extra, labelled as such.

- ``paper``: every epoch sees freshly augmented training images (RandomResizedCrop 0.08-1 and
  flip) through the frozen backbone in eval mode, at the learning rate and batch of the
  dataset's source (:data:`PAPER_PROBE`).
- ``fast``: the training split's centre-view features are extracted once (and cached); the
  classifier trains on them in seconds. No augmentation, so it is a slightly different
  number: ``bench/RESULTS.md`` puts the two side by side. Its learning rate is chosen among
  :data:`FAST_PROBE_LRS` on a held-out slice of the training split (:func:`choose_fast_lr`),
  never on the evaluation split.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from contrastlab.views.augment import Augment, ViewSampler

PAPER_PROBE: dict[str, tuple[float, int]] = {
    # the ContrastiveCrop authors' configs/linear/<dataset>_res18.py: lr = 10.0, batch_size = 512
    "cifar10": (10.0, 512),
    "cifar100": (10.0, 512),
    "stl10": (10.0, 512),
    "tinyimagenet": (10.0, 512),
    # ImageNet (image folders): MoCo's main_lincls.py and SynCo's scripts/lineval_*: lr 30,
    # batch 256 (the ContrastiveCrop authors' configs/linear/IN1K_res50.py too)
    "folder": (30.0, 256),
}
"""The paper protocol's SGD learning rate and batch per dataset (SPEC.md section 5)."""

FAST_PROBE_LRS = (0.1, 0.3, 1.0, 3.0, 10.0)
"""The fast probe's learning-rate candidates, chosen among on a held-out training slice."""
FAST_PROBE_BATCH = 256
HOLDOUT_FRACTION = 0.1


@dataclass
class ProbeResult:
    """Top-1/top-5 (percent) of the last epoch; ``best_*`` is an extra (chosen on the
    evaluation split, so optimistic), never the headline number."""

    mode: str
    epochs: int
    top1: float
    top5: float
    best_top1: float
    best_epoch: int
    seconds: float
    lr: float = 0.0
    batch_size: int = 0
    train_images: int = 0
    eval_images: int = 0
    holdout_top1: dict[str, float] | None = None
    """The fast mode's candidates: learning rate -> top-1 on the held-out training slice."""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        chosen = ""
        if self.holdout_top1:
            tried = ", ".join(f"{lr}: {top1:.1f}%" for lr, top1 in self.holdout_top1.items())
            chosen = (
                f" (chosen on a held-out {HOLDOUT_FRACTION:.0%} of the training split: {tried})"
            )
        return (
            f"linear probe ({self.mode}, {self.train_images:,} training and "
            f"{self.eval_images:,} evaluation images, lr {self.lr:g}{chosen}, batch "
            f"{self.batch_size}): last epoch of {self.epochs} top-1 {self.top1:.2f}% top-5 "
            f"{self.top5:.2f}%; best epoch {self.best_epoch} top-1 {self.best_top1:.2f}% (chosen "
            f"on the evaluation split, as the ContrastiveCrop authors' DDP_linear.py reports); "
            f"{self.seconds:.1f} s"
        )


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)):
    """Percent of rows whose label is among the ``k`` largest logits, for each ``k``."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks]


def step_schedule(optimizer: torch.optim.Optimizer, epochs: int):
    milestones = sorted({max(1, round(0.6 * epochs)), max(1, round(0.8 * epochs))})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)


def train_linear(
    batches_of_epoch: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]],
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    num_classes: int,
    epochs: int,
    lr: float,
    mode: str,
    seed: int = 0,
) -> ProbeResult:
    """The shared loop: ``batches_of_epoch(epoch)`` yields ``(features, labels)`` batches."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    classifier = nn.Linear(eval_features.shape[1], num_classes)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    schedule = step_schedule(optimizer, epochs)
    history = []
    bar = tqdm(range(epochs), desc=f"linear probe ({mode}, lr {lr:g})", unit="epoch", leave=False)
    for epoch in bar:
        for features, labels in batches_of_epoch(epoch):
            loss = F.cross_entropy(classifier(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        with torch.no_grad():
            history.append(topk_accuracy(classifier(eval_features), eval_labels))
        bar.set_postfix(top1=f"{history[-1][0]:.2f}")
    best = max(range(epochs), key=lambda e: history[e][0])
    return ProbeResult(
        mode=mode,
        epochs=epochs,
        top1=history[-1][0],
        top5=history[-1][1],
        best_top1=history[best][0],
        best_epoch=best + 1,
        seconds=time.perf_counter() - start,
        lr=lr,
        eval_images=len(eval_labels),
    )


def linear_on_features(
    train: tuple[torch.Tensor, torch.Tensor],
    evaluation: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    epochs: int = 100,
    lr: float = 10.0,
    batch_size: int = 256,
    seed: int = 0,
) -> ProbeResult:
    """Fast mode: the classifier on fixed (cached) training features."""
    features, labels = train
    generator = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = torch.randperm(len(features), generator=generator)
        return [(features[rows], labels[rows]) for rows in order.split(batch_size)]

    result = train_linear(batches, *evaluation, num_classes, epochs, lr, "fast", seed)
    result.batch_size, result.train_images = batch_size, len(labels)
    return result


def holdout_split(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, held_out)`` row indices: a seeded :data:`HOLDOUT_FRACTION` of ``count`` rows
    (at least one) held out of the training split."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 7919))
    held = max(1, round(HOLDOUT_FRACTION * count))
    return order[held:].sort().values, order[:held].sort().values


def choose_fast_lr(
    train: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    epochs: int,
    batch_size: int = FAST_PROBE_BATCH,
    candidates: tuple[float, ...] = FAST_PROBE_LRS,
    seed: int = 0,
) -> tuple[float, dict[str, float]]:
    """The candidate learning rate whose classifier, trained on the training split less a
    held-out slice, is most accurate on that slice (last epoch; ties to the smaller lr). The
    evaluation split is never seen. Returns ``(lr, {lr: held-out top-1})``."""
    features, labels = train
    kept, held = holdout_split(len(labels), seed)
    fit_on = (features[kept], labels[kept])
    judge_on = (features[held], labels[held])
    scores = {
        str(lr): linear_on_features(
            fit_on, judge_on, num_classes, epochs, lr, batch_size, seed
        ).top1
        for lr in candidates
    }
    best = max(candidates, key=lambda lr: (scores[str(lr)], -lr))
    return best, scores


def probe_augment(base: Augment) -> Augment:
    """The linear-probe training view: RandomResizedCrop (0.08, 1) and flip, no colour."""
    return Augment(
        size=base.size,
        scale=(0.08, 1.0),
        jitter_prob=0.0,
        grayscale_prob=0.0,
        blur_prob=0.0,
        solarize_prob=0.0,
        mean=base.mean,
        std=base.std,
    )


def linear_on_images(
    model,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    evaluation: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    device: torch.device,
    epochs: int = 100,
    lr: float = 10.0,
    batch_size: int = 256,
    seed: int = 0,
) -> ProbeResult:
    """Paper protocol: augmented in-memory training images through the frozen backbone (eval
    mode, no gradient) every epoch."""
    model.to(device).eval()
    views = ViewSampler([probe_augment(model.augment)], seed=seed)
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def encode(rows: torch.Tensor) -> torch.Tensor:
        images = train_images[rows].to(device)
        (view,) = views(images, rows)
        with model.precision_context(device):
            return model.backbone(model._layout(view)).float().cpu()

    def batches(epoch: int):
        order = torch.randperm(len(train_images), generator=generator)
        return ((encode(rows), train_labels[rows]) for rows in order.split(batch_size))

    result = train_linear(batches, *evaluation, num_classes, epochs, lr, "paper", seed)
    result.batch_size, result.train_images = batch_size, len(train_labels)
    return result
