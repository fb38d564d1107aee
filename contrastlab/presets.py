"""The YAML files shipped under ``contrastlab/configs``: run presets
(``<dataset>/<framework>[_<plug-ins>]``), each with its recipe card beside it
(``<preset>.card.yaml``); the sources the cards cite (``sources/``); and the experiment grids of
``contrastlab reproduce`` (``grids/``).

A recipe card says where a preset's recipe comes from and holds the preset to it. It names a
reference, built from layers merged in order: fragments of a source file (the settings an
author's configuration fixes, each with the place that states it) or another preset (a recipe
of our own that is a variation of it). Every setting the reference fixes must equal the
preset's resolved value (the value a run gets, defaults included) unless the card's
``deviations`` explain the difference; an explanation of a setting that does not differ is an
error too, so a card cannot go stale. ``kind`` says whether the preset *is* its source's recipe
(``source``) or contrastlab's own recipe described against a reference (``contrastlab``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

GRIDS = "grids"
SOURCES = "sources"
CARD_SUFFIX = ".card.yaml"
KINDS = ("source", "contrastlab")
ABSENT = "(not set)"

RECIPE_DATA_KEYS = ("data.dataset", "data.batch_size", "data.train_subset", "data.eval_subset")
"""The data and trainer settings that belong to a recipe (the rest say where and how it runs)."""
RECIPE_TRAINER_KEYS = ("trainer.max_epochs",)
RUNTIME_MODEL_KEYS = {
    "model.channels_last",
    "model.compile",
    "model.compile_backend",
    "model.seed",
    "model.backbone_weights",
}
"""Model options that change how fast or from where a run starts, not what it trains."""

COMMON_REQUIRED = (
    "model.class",
    "model.backbone",
    "model.cifar_stem",
    "model.optimizer",
    "model.sgd_momentum",
    "model.lr",
    "model.weight_decay",
    "model.warmup_epochs",
    "model.lr_floor",
    "model.lr_interval",
    "model.augment.size",
    "model.augment.scale",
    "model.augment.jitter_prob",
    "model.augment.grayscale_prob",
    "model.augment.blur_prob",
    "model.augment.mean",
    "model.augment.std",
    "model.second_view",
    "data.dataset",
    "data.batch_size",
    "trainer.max_epochs",
)
FRAMEWORK_REQUIRED = {
    "MoCoV2": ("queue_size", "momentum", "temperature", "proj_hidden", "proj_dim", "symmetric"),
    "SimCLR": (
        "temperature",
        "base_temperature",
        "loss_scale",
        "proj_hidden",
        "proj_dim",
        "proj_batch_norm",
        "proj_out_bn",
    ),
    "BYOL": (
        "proj_hidden",
        "proj_dim",
        "pred_hidden",
        "momentum",
        "momentum_schedule",
        "loss_scale",
    ),
    "SimSiam": (
        "proj_hidden",
        "proj_dim",
        "proj_layers",
        "proj_out_affine",
        "pred_hidden",
        "fixed_predictor_lr",
        "zero_init_residual",
    ),
}
"""What every card's reference must fix: a card cannot leave out a setting that defines the
recipe (plus the plug-in's settings when the preset has one)."""


def preset_dir() -> Path:
    return Path(str(resources.files("contrastlab") / "configs"))


def _is_preset(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return parts[0] not in (GRIDS, SOURCES) and not path.name.endswith(CARD_SUFFIX)


def list_presets() -> list[str]:
    """Every run preset's name, such as ``cifar10/mocov2`` (grids, sources and cards are not)."""
    root = preset_dir()
    paths = (p for p in root.rglob("*.yaml") if _is_preset(p, root))
    return sorted(str(p.relative_to(root).with_suffix("")) for p in paths)


def preset_path(name: str) -> Path | None:
    """The file of preset ``name`` (with or without ``.yaml``), or ``None``."""
    root = preset_dir()
    path = root / f"{name.removesuffix('.yaml')}.yaml"
    return path if path.is_file() and _is_preset(path, root) else None


def list_grids() -> list[str]:
    return sorted(p.stem for p in (preset_dir() / GRIDS).glob("*.yaml"))


# --------------------------------------------------------------------------- resolved settings


@cache
def _settings_parser():
    """The schema ``contrastlab fit`` parses a config with (model, data, trainer), unbuilt."""
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningArgumentParser

    import contrastlab.methods  # noqa: F401  (registers the frameworks as subclasses)
    from contrastlab.data.module import ContrastDataModule
    from contrastlab.methods.base import ContrastiveMethod

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(ContrastiveMethod, "model", subclass_mode=True)
    parser.add_lightning_class_args(ContrastDataModule, "data")
    parser.add_lightning_class_args(pl.Trainer, "trainer")
    parser.add_argument("--seed_everything", type=int | bool, default=True)
    return parser


def flatten(value: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dotted keys of a resolved config: ``model.lr``, ``model.augment.scale``,
    ``model.crop.alpha``; a ``class_path`` becomes ``<key>.class`` (the class's name) and its
    ``init_args`` sit under ``<key>``; an unset plug-in is ``<key>: None``."""
    out = {} if out is None else out
    if isinstance(value, dict) and "class_path" in value:
        out[f"{prefix}.class"] = str(value["class_path"]).rsplit(".", 1)[-1]
        flatten(value.get("init_args") or {}, prefix, out)
    elif isinstance(value, dict) and value:
        for key, item in value.items():
            flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value
    return out


def resolved_settings(name: str) -> dict[str, Any]:
    """A copy of :func:`_resolved_settings` (parsed once per preset and process)."""
    return dict(_resolved_settings(name))


@cache
def _resolved_settings(name: str) -> dict[str, Any]:
    """Preset ``name``'s recipe as a run resolves it (constructor defaults included), under
    dotted keys (:func:`flatten`): every model option but the runtime ones, and
    :data:`RECIPE_DATA_KEYS` / :data:`RECIPE_TRAINER_KEYS`."""
    path = preset_path(name)
    if path is None:
        raise KeyError(f"no preset {name!r}")
    config = _settings_parser().parse_path(str(path)).as_dict()
    flat = flatten({k: config[k] for k in ("model", "data", "trainer")})
    keep = set(RECIPE_DATA_KEYS) | set(RECIPE_TRAINER_KEYS)
    return {
        key: value
        for key, value in flat.items()
        if key in keep or (key.startswith("model.") and key not in RUNTIME_MODEL_KEYS)
    }


def same_value(ours: Any, theirs: Any) -> bool:
    """Equal as recipe values: numbers to 1e-9 (relative), lists element by element, booleans
    only to booleans."""
    if isinstance(ours, list | tuple) and isinstance(theirs, list | tuple):
        return len(ours) == len(theirs) and all(map(same_value, ours, theirs))
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return ours is theirs
    if isinstance(ours, int | float) and isinstance(theirs, int | float):
        return math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12)
    return ours == theirs


# --------------------------------------------------------------------------- cards


@dataclass(frozen=True)
class Reference:
    """One setting the reference fixes: its value and where the source states it."""

    value: Any
    where: str


@dataclass(frozen=True)
class Row:
    """A card line: the preset's value beside the reference's (``note``: why they differ)."""

    key: str
    ours: Any
    reference: Reference
    note: str | None

    @property
    def differs(self) -> bool:
        return not same_value(self.ours, self.reference.value)


@dataclass
class Card:
    """A preset's recipe card (see the module docstring)."""

    preset: str
    title: str
    kind: str
    reference: list[dict[str, Any]]
    deviations: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def source_names(self) -> list[str]:
        """The reference's layers in words: a source's title and file, or a preset's name."""
        names = []
        for layer in self.reference:
            if "preset" in layer:
                names.append(f"contrastlab preset {layer['preset']}")
            else:
                source = load_source(layer["source"])
                file = f" {layer['file']}" if "file" in layer else ""
                names.append(f"{source['title']} ({source['repository']}{file})")
        return names


def card_path(name: str) -> Path:
    return preset_dir() / f"{name}{CARD_SUFFIX}"


def load_source(name: str) -> dict[str, Any]:
    path = preset_dir() / SOURCES / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such source (a card's reference names it)")
    return yaml.safe_load(path.read_text())


def load_card(name: str) -> Card:
    """Preset ``name``'s card; a missing card or a malformed one is an error naming the file."""
    path = card_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: preset {name} has no recipe card")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"title", "kind", "reference", "deviations", "notes"}
    if unknown or data.get("kind") not in KINDS or not data.get("reference"):
        raise ValueError(
            f"{path}: a card has title, kind ({' or '.join(KINDS)}), reference, and optional "
            f"deviations and notes; got keys {sorted(data)} and kind {data.get('kind')!r}"
        )
    return Card(
        name,
        data.get("title", ""),
        data["kind"],
        data["reference"],
        data.get("deviations") or {},
        data.get("notes") or [],
    )


def reference_settings(card: Card) -> dict[str, Reference]:
    """The card's reference: its layers' settings merged in order (later layers win)."""
    merged: dict[str, Reference] = {}
    for layer in card.reference:
        if "preset" in layer:
            where = f"preset {layer['preset']}"
            for key, value in resolved_settings(layer["preset"]).items():
                _set(merged, key, Reference(value, where))
            continue
        fragments = load_source(layer["source"])["fragments"]
        for fragment in layer["fragments"]:
            if fragment not in fragments:
                raise KeyError(f"source {layer['source']!r} has no fragment {fragment!r}")
            for key, entry in fragments[fragment].items():
                _set(merged, key, Reference(entry["value"], entry["where"]))
    return merged


def _set(merged: dict[str, Reference], key: str, reference: Reference) -> None:
    """Set ``key``, replacing what it overrides: its parent (``model.crop: null`` under
    ``model.crop.alpha``) and its own sub-keys."""
    parts = key.split(".")
    for depth in range(1, len(parts)):
        merged.pop(".".join(parts[:depth]), None)
    for other in [k for k in merged if k.startswith(f"{key}.")]:
        del merged[other]
    merged[key] = reference


def card_rows(card: Card, ours: dict[str, Any] | None = None) -> list[Row]:
    """Every setting of the card's reference beside the preset's value, in reference order."""
    ours = resolved_settings(card.preset) if ours is None else ours
    return [
        Row(key, our_value(ours, key), reference, card.deviations.get(key))
        for key, reference in reference_settings(card).items()
    ]


def our_value(ours: dict[str, Any], key: str) -> Any:
    """The preset's value of ``key``: a plug-in that is set reads as its class's name (so it
    differs from a reference without it), an option that does not exist as :data:`ABSENT`."""
    if key in ours:
        return ours[key]
    if f"{key}.class" in ours:
        return ours[f"{key}.class"]
    nested = {k.removeprefix(f"{key}."): v for k, v in ours.items() if k.startswith(f"{key}.")}
    return nested or ABSENT


def required_keys(ours: dict[str, Any]) -> list[str]:
    """What a card's reference must fix for this preset (see :data:`FRAMEWORK_REQUIRED`)."""
    framework = ours.get("model.class", "")
    keys = list(COMMON_REQUIRED)
    keys += [f"model.{k}" for k in FRAMEWORK_REQUIRED.get(framework, ())]
    has_crop = "model.crop.class" in ours
    keys += ["model.crop.class", "model.crop.alpha"] if has_crop else ["model.crop"]
    if "model.synthetic.class" in ours:
        keys += ["model.synthetic.n_hard", "model.synthetic_warmup_epochs"]
    return keys


def card_problems(card: Card) -> list[str]:
    """Why a preset does not hold to its card (empty when it does): a difference the card does
    not explain, an explanation of a setting that does not differ or that the reference does
    not fix, and a setting the reference must fix but does not."""
    ours = resolved_settings(card.preset)
    rows = card_rows(card, ours)
    fixed = {row.key for row in rows}
    problems = [
        f"{row.key}: ours {row.ours!r}, reference {row.reference.value!r} "
        f"({row.reference.where}), and the card does not explain why"
        for row in rows
        if row.differs and not row.note
    ]
    problems += [
        f"{row.key}: the card explains a difference, but ours equals the reference ({row.ours!r})"
        for row in rows
        if row.note and not row.differs
    ]
    problems += [
        f"{key}: the card explains a difference in a setting its reference does not fix"
        for key in card.deviations
        if key not in fixed
    ]
    problems += [
        f"{key}: its reference does not fix this setting"
        for key in required_keys(ours)
        if not any(k == key or k.startswith(f"{key}.") for k in fixed)
    ]
    return problems


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value)


def format_card(name: str) -> str:
    """The card as ``contrastlab presets NAME`` prints it: the source, then one line per
    setting (ours, the reference's, where it is stated), differences marked and explained."""
    card = load_card(name)
    rows = card_rows(card)
    kind = (
        "the source's recipe (each difference below is explained)"
        if card.kind == "source"
        else "contrastlab's own recipe, described against the reference below"
    )
    lines = [f"{name}: {card.title}", f"kind: {kind}"]
    lines += [f"reference: {source}" for source in card.source_names()]
    width = max(len(row.key) for row in rows)
    ours_width = max(len(_shown(row.ours)) for row in rows)
    ref_width = max(len(_shown(row.reference.value)) for row in rows)
    lines.append("")
    lines.append(
        f"  {'setting':<{width}}  {'ours':<{ours_width}}  {'reference':<{ref_width}}  where"
    )
    for row in rows:
        mark = "!" if row.differs else " "
        lines.append(
            f"{mark} {row.key:<{width}}  {_shown(row.ours):<{ours_width}}  "
            f"{_shown(row.reference.value):<{ref_width}}  {row.reference.where}"
        )
    differing = [row for row in rows if row.differs]
    if differing:
        lines += ["", "differences (!), and why:"]
        lines += [f"  {row.key}: {row.note or 'NOT EXPLAINED'}" for row in differing]
    if card.notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in card.notes]
    return "\n".join(lines)


def presets_table() -> str:
    """The README's preset table, from the cards: each preset, whether it is its source's
    recipe or contrastlab's own, and its card's title."""
    lines = ["| preset | recipe | what (`contrastlab presets NAME` prints the card) |"]
    lines.append("| --- | --- | --- |")
    for name in list_presets():
        card = load_card(name)
        kind = "the source's" if card.kind == "source" else "contrastlab's"
        lines.append(f"| `{name}` | {kind} | {card.title} |")
    return "\n".join(lines)
