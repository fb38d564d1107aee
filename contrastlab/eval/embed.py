"""One embedding per image of a folder or a dataset split, written where other tools read it.

The output directory holds ``embeddings.npy`` (``float32 (N, D)``, the backbone's features of
the un-augmented centre view, as the kNN monitor and the linear probes see images),
``files.txt`` (row ``i``'s image, one per line) and ``embed.json`` (what was embedded, with
what, and how to load it). Rows go into ``embeddings.npy.partial`` (a NumPy memory map) batch
by batch; every ``save_seconds`` the map is flushed and the number of rows done is written to
``embed.progress.json`` atomically, so a run stopped at any moment continues from there when
started again with the same checkpoint and images (a different checkpoint or image list starts
over). The finished file is renamed into place, so ``embeddings.npy`` is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from contrastlab.data.datasets import InMemoryImages, collate_lazy, pass_batch
from contrastlab.io import atomic_write
from contrastlab.methods.base import ContrastiveMethod

EMBEDDINGS, FILES, META, PROGRESS = (
    "embeddings.npy",
    "files.txt",
    "embed.json",
    "embed.progress.json",
)
LOAD_LINES = (
    "import numpy as np\n"
    "embeddings = np.load('embeddings.npy')  # (N, D) float32\n"
    "files = open('files.txt').read().splitlines()  # row i is files[i]"
)


@dataclass(frozen=True)
class Embedded:
    """Where the embeddings went, how many, how wide, and the row this call started at."""

    out: Path
    rows: int
    dim: int
    started_at: int

    def summary(self) -> str:
        resumed = f", continued from row {self.started_at:,}" if self.started_at else ""
        return f"wrote {self.rows:,} embeddings of {self.dim} dimensions to {self.out}{resumed}"


def embed_dataset(
    model: ContrastiveMethod,
    dataset: Dataset,
    names: Sequence[str],
    out: str | Path,
    device: torch.device,
    source: dict,
    batch_size: int = 256,
    workers: int = 0,
    save_seconds: float = 30.0,
    progress: bool = True,
) -> Embedded:
    """Embed every image of ``dataset`` (row ``i`` is ``names[i]``) into ``out``; ``source``
    (JSON-able: the checkpoint, the folder or split) is recorded in ``embed.json`` and, with
    the names and the feature width, decides whether an unfinished run may be continued."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(names) != len(dataset):
        raise ValueError(f"{len(names)} names for {len(dataset)} images")
    dim = int(model.backbone.feature_dim)
    fingerprint = _fingerprint(source, names, dim)
    array, start = _open_rows(out, fingerprint, len(names), dim, names)
    model.to(device).eval()
    done, last_save = start, time.monotonic()
    with _bar(len(names), start, progress) as bar:
        for images, indices, _ in ordered_batches(dataset, batch_size, workers, start):
            with torch.no_grad(), model.precision_context(device):
                features = model.features(images.to(device, non_blocking=True))
            array[indices.numpy()] = features.float().cpu().numpy()
            done += len(indices)
            bar.update(len(indices))
            if time.monotonic() - last_save >= save_seconds:
                _save_progress(out, array, fingerprint, done)
                last_save = time.monotonic()
    array.flush()
    del array
    os.replace(out / f"{EMBEDDINGS}.partial", out / EMBEDDINGS)
    meta = {**source, "rows": len(names), "dim": dim, "features": feature_recipe(model)}
    meta["load"] = LOAD_LINES
    text = (json.dumps(meta, indent=2) + "\n").encode()
    atomic_write(out / META, lambda f: f.write(text))
    (out / PROGRESS).unlink(missing_ok=True)
    return Embedded(out, len(names), dim, start)


def feature_recipe(model: ContrastiveMethod) -> str:
    augment = model.augment
    return (
        f"backbone features of {model.hparams.backbone} in eval mode; each image centre-cropped "
        f"(or resized) to {augment.size} px, normalised with mean {list(augment.mean)} and std "
        f"{list(augment.std)}"
    )


def ordered_batches(dataset: Dataset, batch_size: int, workers: int, start: int) -> DataLoader:
    """``(uint8 images, indices, labels)`` batches of ``dataset[start:]`` in order."""
    if isinstance(dataset, InMemoryImages):
        rows = torch.arange(start, len(dataset)).split(batch_size)
        return DataLoader(dataset, batch_sampler=[r.tolist() for r in rows], collate_fn=pass_batch)
    rest = Subset(dataset, range(start, len(dataset)))
    return DataLoader(rest, batch_size=batch_size, collate_fn=collate_lazy, num_workers=workers)


def _fingerprint(source: dict, names: Sequence[str], dim: int) -> str:
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode())
    digest.update(f"{dim}\n".encode())
    for name in names:
        digest.update(f"{name}\n".encode())
    return digest.hexdigest()


def _open_rows(
    out: Path, fingerprint: str, rows: int, dim: int, names: Sequence[str]
) -> tuple[np.memmap, int]:
    """The unfinished run's memory map and its rows done, or a new map from row 0."""
    partial = out / f"{EMBEDDINGS}.partial"
    try:
        saved = json.loads((out / PROGRESS).read_text())
    except (OSError, ValueError):
        saved = {}
    if saved.get("fingerprint") == fingerprint and partial.is_file():
        return np.lib.format.open_memmap(partial, mode="r+"), int(saved["rows"])
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(rows, dim))
    listing = "".join(f"{name}\n" for name in names).encode()
    atomic_write(out / FILES, lambda f: f.write(listing))
    _save_progress(out, array, fingerprint, 0)
    return array, 0


def _save_progress(out: Path, array: np.memmap, fingerprint: str, rows: int) -> None:
    """Flush the rows to disk first, then record how many there are."""
    array.flush()
    text = json.dumps({"fingerprint": fingerprint, "rows": rows}).encode()
    atomic_write(out / PROGRESS, lambda f: f.write(text))


def _bar(total: int, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="embedding", unit="img", disable=not enabled)
