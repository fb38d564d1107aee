"""Opening checkpoints safely (the file, the framework, its data), and what a resume may
change.

A checkpoint is read with ``weights_only=True`` (no code runs from the file) and names its
framework in ``hyper_parameters._class_path``; only contrastlab's own methods are accepted, and
the name is looked up in an allow-list, never imported. A resumed run keeps the model, data
and schedule it was saved with: options that would change them are refused with the list of
differences, except ``trainer.max_epochs``, which is applied with a note of what it does to the
cosine schedule. :func:`method_from_checkpoint` and :func:`data_from_checkpoint` rebuild the
model and the data module a checkpoint was trained with (every evaluation command starts there).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contrastlab.data.module import ContrastDataModule
from contrastlab.io import load_tensors
from contrastlab.schedules import cosine_with_warmup


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked (the message is one line)."""


# Options that only change what is measured or where data is read, never the trained state.
HARMLESS_ON_RESUME = {
    # backbone_weights only initialises a new run (a resumed one takes its weights from the
    # checkpoint); compile only changes how the same step is executed.
    "model": {"knn_k", "knn_t", "backbone_weights", "compile", "compile_backend"},
    "data": {"root", "download", "num_workers", "eval_batch_size", "eval_subset", "on_device"},
}


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` onto the CPU, with a clear error if absent or
    unreadable."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return load_tensors(path)
    except Exception as error:  # a truncated or foreign file: say which, in one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path} is not a readable contrastlab checkpoint: {reason}"
        ) from None


def method_classes() -> dict[str, type]:
    """The allow-list: every accepted ``_class_path`` and the class it names."""
    from contrastlab import methods

    classes = {}
    for name in ("MoCoV2", "SimCLR", "BYOL", "SimSiam"):
        cls = getattr(methods, name)
        classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
        classes[f"contrastlab.methods.{name}"] = cls
    return classes


def method_class(checkpoint: Mapping[str, Any]) -> type:
    """The framework class a checkpoint names (MoCo v2 for checkpoints without a name)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    class_path = hparams.get("_class_path", "contrastlab.methods.MoCoV2")
    classes = method_classes()
    if not isinstance(class_path, str) or class_path not in classes:
        raise CheckpointError(
            f"checkpoint names the class {class_path!r}; only contrastlab's methods are "
            f"accepted: {', '.join(sorted(c for c in classes if c.count('.') == 2))}"
        )
    return classes[class_path]


def method_arguments(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The saved constructor arguments of the framework (plain values), less the initial
    weights file: the checkpoint's own weights replace it (and it may be gone)."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    return {k: v for k, v in hparams.items() if not k.startswith("_") and k != "backbone_weights"}


def resume_changes(
    section: str,
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """``section.key: saved -> current`` for every option that differs and matters. An option
    the checkpoint lacks (added to contrastlab after it was written) counts as its default
    from ``defaults``, so an upgrade does not strand a run."""
    ignored = HARMLESS_ON_RESUME.get(section, set())
    keys = sorted((set(saved) | set(current)) - ignored)
    defaults = defaults or {}
    then = {k: saved[k] if k in saved else defaults.get(k) for k in keys}
    return [
        f"{section}.{key}: {then[key]!r} in the checkpoint, {current.get(key)!r} now"
        for key in keys
        if not key.startswith("_") and then[key] != current.get(key)
    ]


def option_defaults(cls: type) -> dict[str, Any]:
    """The constructor defaults of ``cls`` (what an option absent from a checkpoint meant)."""
    import inspect

    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def schedule_note(
    saved_epochs: int, new_epochs: int, step: int, steps_per_epoch: int, warmup_epochs: float
) -> str:
    """What resuming with another ``trainer.max_epochs`` does to the cosine schedule."""
    warmup = int(warmup_epochs * steps_per_epoch)
    before = cosine_with_warmup(step, saved_epochs * steps_per_epoch, warmup)
    after = cosine_with_warmup(step, new_epochs * steps_per_epoch, warmup)
    return (
        f"trainer.max_epochs {saved_epochs} -> {new_epochs}: the cosine schedule now spans "
        f"{new_epochs} epochs; at step {step} the learning rate goes from {before:.3f} to "
        f"{after:.3f} x model.lr"
    )


def method_from_checkpoint(checkpoint: dict):
    """Rebuild the framework a checkpoint was trained with and load its weights."""
    model = method_class(checkpoint)(**method_arguments(checkpoint))
    model.load_state_dict(checkpoint["state_dict"])
    return model


def data_from_checkpoint(
    checkpoint: dict, root: str | None = None, view_size: int | None = None
) -> ContrastDataModule:
    """The data module a checkpoint was trained with (optionally read from another ``root``);
    ``view_size`` (the model's) sizes a native-resolution folder's evaluation squares."""
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    data_args = {k: v for k, v in saved.items() if not k.startswith("_")}
    if root is not None:
        data_args["root"] = root
    data = ContrastDataModule(**data_args)
    data.view_size = view_size
    return data
