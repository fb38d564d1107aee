"""Semi-supervised evaluation: fine-tune the whole encoder on a class-balanced labelled subset.

The subset is seeded and class-balanced; its dataset indices are returned with the result so
that they can be saved beside it and the run reproduced or compared on the same labels.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from contrastlab.eval.linear import probe_augment, topk_accuracy
from contrastlab.models.splitbn import SplitBatchNorm
from contrastlab.schedules import cosine_with_warmup
from contrastlab.views.augment import ViewSampler


def parse_label_amount(text: str) -> float | int:
    """``"1%"`` -> 0.01 (a fraction of each class), ``"500"`` -> 500 (images in total)."""
    text = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
    if match:
        fraction = float(match.group(1)) / 100
        if not 0 < fraction <= 1:
            raise ValueError(f"--labels {text}: a percentage must lie in (0, 100]")
        return fraction
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError(f"--labels {text!r}: expected a percentage such as 1% or a count such as 500")


FINETUNE_EPOCHS = {"1%": 60, "10%": 30}
"""SynCo's semi-supervised epochs (scripts/semisup_*: 60 for 1% of the labels, 30 for 10%);
other amounts default to 30."""


def default_finetune_epochs(labels: str) -> int:
    return FINETUNE_EPOCHS.get(labels.strip(), 30)


def subset_from_list(
    lines: list[str], names: list[str] | None, count: int, where: str
) -> torch.Tensor:
    """Sorted dataset indices of the images a subset list names, one per line: an image's file
    name (SimCLR's 1% / 10% ImageNet lists, e.g. ``n01440764_10026.JPEG``, matched to the
    training split's file names without their folders), ``class/file`` where a file name
    recurs in several class folders, or a dataset index. Blank lines are skipped; a name or
    index the split lacks, or a file name it holds more than once, is an error naming it."""
    position: dict[str, int] = {}
    twice: set[str] = set()
    for i, name in enumerate(names or []):
        path = Path(name)
        twice |= {path.name} & position.keys()
        position[path.name] = i
        position[f"{path.parent.name}/{path.name}"] = i
    ambiguous = sorted({x.strip() for x in lines} & twice)
    if ambiguous:
        raise ValueError(
            f"{where}: {len(ambiguous)} file name(s) occur in several class folders; write them "
            "as class/file: " + ", ".join(ambiguous[:5])
        )
    chosen, unknown = set(), []
    for line in (x.strip() for x in lines):
        if not line:
            continue
        if line.isdigit() and int(line) < count:
            chosen.add(int(line))
        elif line in position:
            chosen.add(position[line])
        else:
            unknown.append(line)
    if unknown:
        hint = "" if names is not None else " (this dataset has no file names: list indices)"
        raise ValueError(
            f"{where}: {len(unknown)} line(s) name no image of the training split{hint}: "
            + ", ".join(unknown[:5])
        )
    if not chosen:
        raise ValueError(f"{where}: lists no image")
    return torch.tensor(sorted(chosen), dtype=torch.int64)


def balanced_subset(labels: torch.Tensor, amount: float | int, seed: int = 0) -> torch.Tensor:
    """Sorted dataset indices of a seeded, class-balanced labelled subset.

    A fraction takes ``max(1, round(fraction * n_c))`` images of each class ``c``; a count ``N``
    takes ``N // C`` of every class and one more from ``N mod C`` classes chosen at random.
    """
    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    if isinstance(amount, int):
        if amount > len(labels):
            raise ValueError(f"{amount} labels asked for, the split has {len(labels)}")
        per_class = torch.full((len(classes),), amount // len(classes))
        extra = torch.randperm(len(classes), generator=generator)[: amount % len(classes)]
        per_class[extra] += 1
    else:
        counts = torch.stack([(labels == c).sum() for c in classes])
        per_class = (counts.double() * amount).round().clamp(min=1).long()
    chosen = []
    for c, take in zip(classes.tolist(), per_class.tolist(), strict=True):
        members = torch.nonzero(labels == c).squeeze(1)
        if take > len(members):
            raise ValueError(f"class {c} has {len(members)} images, {take} asked for")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


@dataclass
class FinetuneResult:
    """Top-1/top-5 (percent) on the evaluation split after the last epoch; ``best_*`` is an
    extra (chosen on the evaluation split), never the headline number. ``sweep`` holds, when
    the backbone lr was chosen by a sweep, each candidate's top-1 on ``sweep_split``."""

    labels: str
    labelled_images: int
    epochs: int
    top1: float
    top5: float
    seconds: float
    labelled_indices: list[int] = field(repr=False)
    lr: float | None = None
    head_lr: float | None = None
    batch_size: int | None = None
    best_top1: float | None = None
    best_epoch: int | None = None
    sweep: dict[str, float] | None = None
    sweep_split: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        rates = ""
        if self.lr is not None:
            rates = f", backbone lr {self.lr:g}, classifier lr {self.head_lr:g}, batch "
            rates += f"{self.batch_size}"
        if self.sweep:
            tried = ", ".join(f"{lr}: {top1:.1f}%" for lr, top1 in self.sweep.items())
            rates += f"; backbone lr chosen on {self.sweep_split}: {tried}"
        best = ""
        if self.best_epoch is not None:
            best = (
                f"; best epoch {self.best_epoch} top-1 {self.best_top1:.2f}% (chosen on the "
                "evaluation split)"
            )
        return (
            f"fine-tuned on {self.labels} labels ({self.labelled_images} images, "
            f"{self.epochs} epochs{rates}): last epoch top-1 {self.top1:.2f}% top-5 "
            f"{self.top5:.2f}%{best}; {self.seconds:.1f} s"
        )


def finetune(
    model,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    labelled: torch.Tensor,
    evaluation: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    device: torch.device,
    labels_text: str,
    epochs: int = 30,
    lr: float = 0.01,
    head_lr: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune ``model.backbone`` with a new linear classifier on ``labelled`` training
    images (RandomResizedCrop + flip), SGD momentum 0.9 with a cosine schedule, backbone at
    ``lr`` and classifier at ``head_lr``; then evaluate on ``evaluation`` images (uint8) and
    labels with centre views."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    backbone = model.backbone.to(device)
    for module in backbone.modules():
        if isinstance(module, SplitBatchNorm):
            module.num_splits = 1  # fine-tuning batches need not divide into the split groups
    head = nn.Linear(backbone.feature_dim, num_classes).to(device)
    optimizer = torch.optim.SGD(
        [{"params": backbone.parameters(), "lr": lr}, {"params": head.parameters(), "lr": head_lr}],
        momentum=0.9,
        weight_decay=5e-4,
    )
    steps_per_epoch = max(1, math.ceil(len(labelled) / batch_size))
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, total, 0)
    )
    views = ViewSampler([probe_augment(model.augment)], seed=seed)
    generator = torch.Generator().manual_seed(seed)
    backbone.train()
    for _ in tqdm(range(epochs), desc=f"fine-tuning ({labels_text})", unit="epoch", leave=False):
        order = labelled[torch.randperm(len(labelled), generator=generator)]
        for rows in order.split(batch_size):
            if len(rows) < 2:
                continue  # BatchNorm needs two images
            (view,) = views(train_images[rows].to(device), rows)
            with model.precision_context(device):
                logits = head(backbone(model._layout(view)))
            loss = F.cross_entropy(logits.float(), train_labels[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    top1, top5 = evaluate_classifier(model, head, *evaluation, device, batch_size)
    return FinetuneResult(
        labels=labels_text,
        labelled_images=len(labelled),
        epochs=epochs,
        top1=top1,
        top5=top5,
        seconds=time.perf_counter() - start,
        labelled_indices=labelled.tolist(),
    )


@torch.no_grad()
def evaluate_classifier(
    model,
    head: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
) -> list[float]:
    """Top-1/top-5 of ``head(backbone(centre view))`` in eval mode."""
    model.eval()
    logits = []
    for chunk in images.split(batch_size):
        features = model.features(chunk.to(device)).float()
        logits.append(head(features).cpu())
    return topk_accuracy(torch.cat(logits), labels)
