"""The Lightning DataModule: one path from a dataset on disk to uint8 batches with indices."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from contrastlab.data.datasets import (
    FolderViews,
    InMemoryImages,
    LazyImageFolder,
    collate_lazy,
    pass_batch,
    pass_photos,
)
from contrastlab.data.download import ensure_dataset, resolve_root
from contrastlab.data.index import FolderIndex, folder_index
from contrastlab.data.readers import (
    DatasetError,
    ImageSet,
    align_labels,
    class_folders,
    list_image_folder,
    read_cifar,
    read_image_folder,
    read_stl10,
    read_tiny_imagenet,
)
from contrastlab.data.sampling import (
    BoxDrawer,
    GlobalBatchSampler,
    ResumableLoader,
    ViewRequestSampler,
    whole_images,
)
from contrastlab.distributed import world
from contrastlab.options import check_options

DatasetName = Literal["cifar10", "cifar100", "stl10", "tinyimagenet", "folder"]

# (pretraining split, labelled split for the kNN bank, labelled evaluation split)
DEFAULT_SPLITS: dict[str, tuple[str, str, str]] = {
    "cifar10": ("train", "train", "test"),
    "cifar100": ("train", "train", "test"),
    "stl10": ("train+unlabeled", "train", "test"),
    "tinyimagenet": ("train", "train", "val"),
    "folder": ("train", "train", "val"),
}


def training_classes(root: Path) -> list[str] | None:
    """An image folder dataset's class names: its training split's class folders (``None``
    when it is flat)."""
    return class_folders(_folder_split(root, "train")) or None


def folder_split_labels(
    root: Path, split: str, labels: torch.Tensor | None, classes: list[str] | None
) -> torch.Tensor | None:
    """A folder split's labels in the training split's numbering (:func:`align_labels`)."""
    if split == "train":
        return labels
    return align_labels(labels, classes, training_classes(root), str(_folder_split(root, split)))


def read_split(dataset: str, root: Path, split: str, working_size: int | None) -> ImageSet:
    """Read one split of ``dataset`` into memory (a folder's labels numbered as its training
    split's classes)."""
    if dataset in ("cifar10", "cifar100"):
        return read_cifar(root, dataset, split)
    if dataset == "stl10":
        return read_stl10(root, split)
    if dataset == "tinyimagenet":
        return read_tiny_imagenet(root, split)
    images = read_image_folder(_folder_split(root, split), working_size)
    labels = folder_split_labels(root, split, images.labels, images.classes)
    classes = training_classes(root) if labels is not None else images.classes
    return ImageSet(images.images, labels, classes)


def _folder_split(root: Path, split: str) -> Path:
    """``root/split`` when it exists; a root without split folders is the training set."""
    if (root / split).is_dir():
        return root / split
    if split == "train":
        return root
    raise DatasetError(f"{root}: no {split}/ folder for the labelled evaluation split")


def seeded_subset(size: int, count: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a seeded random subset of ``count`` out of ``size`` (``None``: everything)."""
    if count is None or count >= size:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)[:count].sort().values


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of images should live on ``device`` by default: a GPU with at least
    four times that much free memory (the rest is the training step's)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return 4 * nbytes <= free


class ContrastDataModule(pl.LightningDataModule):
    """Datasets as uint8 batches ``(images, dataset indices, labels or -1)``.

    Args:
        dataset: which reader; ``folder`` is any image folder (class sub-folders or flat).
        root: data root; default ``$CONTRASTLAB_DATA`` or ``~/.cache/contrastlab``.
        download: fetch the official archive (md5-checked) when the data is absent.
        batch_size: images per process per step (the global batch is this times processes).
        train_subset / eval_subset: use a seeded random subset of the pretraining split (and of
            the kNN bank) / of the evaluation split, for quick runs.
        lazy: decode image files in data-loader workers (large folders such as ImageNet)
            instead of holding every image in memory. The folder is indexed once (file list,
            sizes, a decode check: :mod:`contrastlab.data.index`). Without ``working_size``,
            views are cut from each image at its own resolution, as the papers' loaders do:
            the boxes are drawn first, each file is decoded at the smallest DCT scale that
            keeps them sharp, and cropping and resizing happen on the device. The kNN splits
            are resized to ``256 / 224`` of the view size and centre-cropped.
        working_size: decode every image to this square first (shorter side resized, centre
            crop): views then never reach the outer parts of non-square photos. In memory it
            is needed when the images differ in size; with ``lazy`` it is the older path (less
            to send to the device, but slower on the CPU: ``bench/data_pipeline.py``).
        skip_bad_images: leave files that cannot be decoded out of a lazy folder (they are
            listed) instead of stopping with an error that names them.
        decode_on_device: native-resolution folders only: workers just read the JPEG files and
            the training process decodes each batch with torchvision's ``decode_jpeg`` on its
            device (nvJPEG on a GPU, for hosts with few cores per GPU). Photos are then decoded
            whole (nvJPEG has no DCT scaling); CMYK JPEGs and other formats stay with the
            workers.
        on_device: keep in-memory datasets on the accelerator (no host-to-device copies);
            by default (``None``) on a GPU when each split takes at most a quarter of its free
            memory (CIFAR-10's training split is 150 MB), and never on the CPU.
        num_workers: data-loader workers (only useful with ``lazy``).
    """

    def __init__(
        self,
        dataset: DatasetName = "cifar10",
        root: str | None = None,
        download: bool = True,
        batch_size: int = 512,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        lazy: bool = False,
        working_size: int | None = None,
        on_device: bool | None = None,
        num_workers: int = 0,
        eval_batch_size: int = 512,
        seed: int = 0,
        skip_bad_images: bool = False,
        decode_on_device: bool = False,
    ) -> None:
        super().__init__()
        if dataset not in DEFAULT_SPLITS:
            raise DatasetError(
                f"unknown dataset {dataset!r}; expected one of {list(DEFAULT_SPLITS)}"
            )
        if lazy and dataset != "folder":
            raise DatasetError("lazy decoding applies to dataset='folder' only")
        if decode_on_device and not (lazy and working_size is None):
            raise DatasetError(
                "decode_on_device applies to native-resolution folders (dataset='folder', "
                "lazy=true, no working_size)"
            )
        self.save_hyperparameters()
        # The loggers get the model's hyperparameters only: Lightning refuses a run whose model
        # and data share a key with different values (model.seed 1 with data.seed 0). Both
        # stay in config.yaml and in every checkpoint.
        self._log_hyperparams = False
        check_options("data", self.hparams)
        self.dataset, self.root, self.download = dataset, root, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_subset, self.eval_subset = train_subset, eval_subset
        self.lazy, self.working_size, self.on_device = lazy, working_size, on_device
        self.num_workers, self.seed = num_workers, seed
        self.skip_bad_images, self.decode_on_device = skip_bad_images, decode_on_device
        self._draw_boxes: BoxDrawer | None = None
        self.view_size: int | None = None
        self.train_set: Dataset | None = None
        self.bank_set: Dataset | None = None
        self.eval_set: Dataset | None = None
        self.num_classes: int | None = None
        self._split_sizes: dict[str, int] = {}  # images in each split before a subset

    def data_root(self) -> Path:
        if self.dataset == "folder":
            return resolve_root(self.root)
        return ensure_dataset(self.dataset, self.root, self.download)

    @property
    def native(self) -> bool:
        """Views cut from each image at its own resolution (lazy folders without a working
        size)."""
        return self.lazy and self.working_size is None

    def attach_views(self, draw: BoxDrawer, view_size: int) -> None:
        """The model's box sampler and view size, which the native-resolution training and
        localisation loaders need to draw boxes before decoding."""
        self._draw_boxes, self.view_size = draw, view_size
        for dataset in (self.bank_set, self.eval_set):
            if self.native and isinstance(dataset, LazyImageFolder):
                dataset.size = self._square_size()

    def prepare_data(self) -> None:
        root = self.data_root()  # downloads once per node, before setup()
        if self.lazy:  # index once per node; the other processes load it in setup()
            for split in dict.fromkeys(DEFAULT_SPLITS[self.dataset]):
                if split == "train" or (root / split).is_dir():
                    folder_index(_folder_split(root, split), skip_bad=self.skip_bad_images)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = self.data_root()
        train_split, bank_split, eval_split = DEFAULT_SPLITS[self.dataset]
        if self.lazy:
            self.train_set = self._lazy(root, train_split, views=self.native)
            self.bank_set = self._lazy(root, bank_split, optional=True)
            self.eval_set = self._lazy(root, eval_split, optional=True)
            return
        train = self._subset(
            read_split(self.dataset, root, train_split, self.working_size),
            self.train_subset,
            check=f"data.train_subset (the {train_split} split)",
        )
        bank = (
            train
            if bank_split == train_split
            else self._subset(
                read_split(self.dataset, root, bank_split, self.working_size), self.train_subset
            )
        )
        evaluation = self._read_optional(root, eval_split)
        self.num_classes = bank.num_classes if bank.labels is not None else None
        self.train_set = self._in_memory(train)
        self.bank_set = self._in_memory(bank) if bank.labels is not None else None
        self.eval_set = self._in_memory(evaluation) if evaluation is not None else None

    def description(self) -> str:
        """What :meth:`setup` found, in one line: ``cifar10 at DIR: 2,048 of 50,000 train
        images, 10,000 test images, 10 classes``; a missing evaluation split says what it
        turns off."""
        train_split, bank_split, eval_split = DEFAULT_SPLITS[self.dataset]
        parts = [self._count(self.train_set, train_split, self.train_subset)]
        if bank_split != train_split and self.bank_set is not None:
            parts.append(self._count(self.bank_set, bank_split, self.train_subset))
        if self.eval_set is not None:
            parts.append(self._count(self.eval_set, eval_split, self.eval_subset))
        else:
            parts.append(f"no {eval_split} split (no kNN monitor; RankMe needs no labels)")
        classes = f"{self.num_classes} classes" if self.num_classes else "no labels"
        return f"{self.dataset} at {self.data_root()}: {', '.join(parts)}, {classes}"

    def _count(self, dataset: Dataset | None, split: str, subset: int | None) -> str:
        size = len(dataset) if dataset is not None else 0
        full = next((n for key, n in self._split_sizes.items() if f"the {split} split" in key), 0)
        whole = f" of {full:,}" if subset is not None and full > size else ""
        return f"{size:,}{whole} {split} images"

    def split_dataset(self, split: str, subset: int | None = None) -> Dataset:
        """Any split of the dataset, un-augmented, for evaluation: in memory (a seeded subset of
        ``subset`` images when given) or, with ``lazy``, decoded from its folder."""
        root = self.data_root()
        if self.lazy:
            return self._lazy(root, split)
        return InMemoryImages(
            self._subset(read_split(self.dataset, root, split, self.working_size), subset)
        )

    def split_views(self, split: str) -> Dataset:
        """Any split as the training loader serves it, for augmented views (a labelled probe
        or fine-tune): native-resolution :class:`FolderViews` for lazy folders without a
        working size, else as :meth:`split_dataset`."""
        if self.native:
            return self._lazy(self.data_root(), split, views=True)
        return self.split_dataset(split)

    def class_names(self, split: str) -> list[str] | None:
        """The names of the labels of ``split`` (CIFAR's ``airplane``, a folder's class
        sub-folders), or ``None`` when the dataset has none."""
        if self.dataset == "folder":
            return training_classes(self.data_root())
        return getattr(self.split_dataset(split), "classes", None)

    def split_file_names(self, split: str) -> list[str] | None:
        """The file names of a folder dataset's split, in dataset order (``None`` for the
        datasets that ship as arrays, such as CIFAR)."""
        if self.dataset != "folder":
            return None
        root = self.data_root()
        if self.lazy:
            return [str(p) for p in self._index(_folder_split(root, split)).paths()]
        files, _, _ = list_image_folder(_folder_split(root, split))
        return [str(p) for p in files]

    def _read_optional(self, root: Path, split: str) -> ImageSet | None:
        if self.dataset == "folder" and not (root / split).is_dir():
            return None
        return self._subset(
            read_split(self.dataset, root, split, self.working_size),
            self.eval_subset,
            check=f"data.eval_subset (the {split} split)",
        )

    def _subset(self, images: ImageSet, count: int | None, check: str | None = None) -> ImageSet:
        """A seeded subset of ``count`` images; with ``check`` (the option and split it
        names), a count larger than the split is an error instead of "everything"."""
        if check is not None:
            self._split_sizes[check] = len(images)
        if check is not None and count is not None and count > len(images):
            raise DatasetError(f"{check}: {count} is more than its {len(images)} images")
        rows = seeded_subset(len(images), count, self.seed)
        return images if rows is None else images.subset(rows)

    def _in_memory(self, images: ImageSet) -> InMemoryImages:
        dataset = InMemoryImages(images)
        if self.trainer is None:
            return dataset
        device = self.trainer.strategy.root_device
        wanted = self.on_device
        if wanted is None:
            wanted = fits_on_device(dataset.images.numel() * dataset.images.element_size(), device)
        if wanted:
            dataset.to(device)
        return dataset

    def _index(self, folder: Path) -> FolderIndex:
        index = folder_index(folder, skip_bad=self.skip_bad_images)
        if index.skipped:
            print(
                f"contrastlab: {folder}: left out {len(index.skipped)} file(s) that cannot be "
                "decoded: " + ", ".join(name for name, _ in index.skipped[:5])
            )
        return index

    def _lazy(
        self, root: Path, split: str, optional: bool = False, views: bool = False
    ) -> Dataset | None:
        """A lazily decoded split: native-resolution :class:`FolderViews` with ``views``, else
        squares of :meth:`_square_size`."""
        folder = _folder_split(root, split) if not optional or (root / split).is_dir() else None
        if folder is None:
            return None
        index = self._index(folder)
        labels = None if index.labels is None else torch.from_numpy(index.labels)
        labels = folder_split_labels(root, split, labels, index.classes)
        if split == "train" and index.classes is not None:
            self.num_classes = len(index.classes)
        label_list = None if labels is None else labels.tolist()
        if views:
            sizes = torch.from_numpy(index.sizes)
            orientations = index.orientations.tolist()
            return FolderViews(
                index.paths(), label_list, sizes, self.decode_on_device, orientations
            )
        return LazyImageFolder(index.paths(), label_list, self._square_size())

    def _square_size(self) -> int:
        """The working size, or for native views the kNN splits' resize: ``256 / 224`` of the
        view size (ImageNet's Resize(256) + CenterCrop(224))."""
        if self.working_size is not None:
            return self.working_size
        return round((self.view_size or 224) * 256 / 224)

    def loader(
        self,
        dataset: Dataset,
        batch_size: int,
        train: bool,
        draw: BoxDrawer | None = None,
        indices: torch.Tensor | None = None,
    ) -> DataLoader:
        """This process's share of ``dataset`` (of its ``indices`` only, when given) in
        batches of ``batch_size``: shuffled per epoch, whole global batches and resumable
        mid-epoch with ``train``; in dataset order, every image once, without. Native
        photo folders need ``draw``, the box sampler their view requests are drawn by."""
        rank, size = world()
        sampler = GlobalBatchSampler(
            len(dataset) if indices is None else len(indices),
            batch_size,
            shuffle=train,
            seed=self.seed,
            rank=rank,
            world_size=size,
            drop_last=train,
            indices=indices,
        )
        if train and len(sampler) == 0:
            raise DatasetError(
                f"{len(dataset)} training images cannot fill one global batch of "
                f"{batch_size * size}; lower data.batch_size"
            )
        lazy = isinstance(dataset, LazyImageFolder | FolderViews)
        workers = self.num_workers if lazy else 0
        if isinstance(dataset, FolderViews):
            if draw is None or self.view_size is None:
                raise RuntimeError(
                    "native-resolution views need the model's box sampler: fit a contrastlab "
                    "method with this data module (it calls attach_views)"
                )
            batches = ViewRequestSampler(
                sampler, batch_size, train, dataset.sizes, draw, self.view_size, self.seed
            )
            collate = pass_photos
        else:
            batches = BatchSampler(sampler, batch_size, drop_last=train)
            collate = collate_lazy if lazy else pass_batch
        loader = ResumableLoader if train else DataLoader
        return loader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=lazy and torch.cuda.is_available(),
            persistent_workers=workers > 0,
            # its own generator: starting an iterator then draws no number from torch's global
            # RNG, which the checkpoint restores, so a mid-epoch resume stays exact
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, self.batch_size, train=True, draw=self._draw_boxes)

    def localization_dataloader(self) -> DataLoader:
        """This process's share of the pretraining split, un-augmented, in dataset order
        (ContrastiveCrop's localisation pass); native-resolution batches carry one box per
        image, the whole image, which the pass resizes to the view size."""
        return self.loader(self.train_set, self.eval_batch_size, train=False, draw=whole_images)

    def sample_dataloader(self, count: int) -> DataLoader:
        """A fixed sample of ``count`` training images (drawn from ``data.seed``: the same at
        every epoch and after a resume), un-augmented, this process's share, batched as the
        localisation loader does (for label-free monitors such as RankMe)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 17)
        sample = torch.randperm(len(self.train_set), generator=generator)[:count]
        return self.loader(
            self.train_set, self.eval_batch_size, False, whole_images, sample.sort().values
        )

    def knn_dataloaders(self) -> list[DataLoader]:
        """``[bank, evaluation]`` loaders in dataset order, or ``[]`` without labelled splits."""
        if self.bank_set is None or self.eval_set is None:
            return []
        return [
            self.loader(self.bank_set, self.eval_batch_size, train=False),
            self.loader(self.eval_set, self.eval_batch_size, train=False),
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self.knn_dataloaders()
