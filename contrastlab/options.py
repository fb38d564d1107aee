"""Every numeric option checked against its allowed range before anything is written.

One table, :data:`RANGES`, keyed by option name; :func:`check_options` applies it to a mapping
of option values under a prefix (``model``, ``data``, ``trainer``) and raises
:class:`OptionError`, whose message is one line naming the key, the value and the range.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class OptionError(ValueError):
    """A user's option is outside its allowed range (the message is one line)."""


class Note(UserWarning):
    """A one-line note for the user: an option set aside, a choice made for them. The command
    line prints it as ``contrastlab: <message>``; in a script it is an ordinary warning."""


@dataclass(frozen=True)
class Range:
    """``low <(=) value <(=) high``; ``integer`` also requires a whole number."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def accepts(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low == -math.inf and self.high == math.inf:
            return f"{kind}"
        if self.high == math.inf:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1, integer=True)
COUNT = Range(0, integer=True)
UNIT_OPEN_ABOVE = Range(0, 1, high_open=True)
PROBABILITY = Range(0, 1)

RANGES: dict[str, Range] = {
    # methods (model.*)
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "sgd_momentum": UNIT_OPEN_ABOVE,
    "warmup_epochs": NON_NEGATIVE,
    "lr_floor": PROBABILITY,
    "base_temperature": POSITIVE,
    "loss_scale": POSITIVE,
    "proj_layers": Range(2, 3, integer=True),
    "knn_k": AT_LEAST_ONE,
    "knn_t": POSITIVE,
    "bn_splits": AT_LEAST_ONE,
    "temperature": POSITIVE,
    "momentum": UNIT_OPEN_ABOVE,
    "queue_size": AT_LEAST_ONE,
    "proj_hidden": AT_LEAST_ONE,
    "proj_dim": AT_LEAST_ONE,
    "pred_hidden": AT_LEAST_ONE,
    "synthetic_warmup_epochs": NON_NEGATIVE,
    # data (data.*)
    "batch_size": AT_LEAST_ONE,
    "eval_batch_size": AT_LEAST_ONE,
    "train_subset": AT_LEAST_ONE,
    "eval_subset": AT_LEAST_ONE,
    "working_size": AT_LEAST_ONE,
    "num_workers": COUNT,
    # trainer (trainer.*)
    "max_epochs": AT_LEAST_ONE,
    "log_every_n_steps": AT_LEAST_ONE,
    "check_val_every_n_epoch": AT_LEAST_ONE,
    # checkpoint cadence (checkpoint.*)
    "every_n_steps": AT_LEAST_ONE,
    "every_minutes": POSITIVE,
}


def check_value(key: str, value: Any) -> None:
    """Raise :class:`OptionError` if ``value`` is outside the range of ``key``'s last part
    (``None`` means "not set" and passes; keys without a rule pass)."""
    rule = RANGES.get(key.rsplit(".", 1)[-1])
    if rule is None or value is None or rule.accepts(value):
        return
    raise OptionError(f"{key} = {value!r} is not allowed: it must be {rule.describe()}")


def check_options(prefix: str, values: Mapping[str, Any]) -> None:
    """:func:`check_value` for every ``prefix.name`` in ``values``."""
    for name, value in values.items():
        check_value(f"{prefix}.{name}", value)


def check_divides(key: str, splits: int, batch_key: str, batch: int) -> None:
    """SplitBatchNorm splits every per-process batch into ``splits`` equal groups."""
    if batch % splits:
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        raise OptionError(
            f"{key} = {splits} must divide {batch_key} = {batch} "
            f"(allowed: {', '.join(map(str, divisors))})"
        )


def suggest_keys(message: str, valid: list[str], keep_message: bool = True) -> str:
    """Append the closest valid keys to each unknown key named in a parser error; without
    ``keep_message``, a message that names unknown keys becomes those lines alone, and any
    other becomes its first line with jsonargparse's value dumps left out."""
    unknown = re.findall(r"--([\w.]+)", message)
    parent = re.search(r'Parser key "([\w.]+)"', message)
    for option in re.findall(r"Option '([\w.]+)' is not accepted", message):
        unknown.append(f"{parent.group(1)}.{option}" if parent else option)
    hints = []
    for key in dict.fromkeys(unknown):
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
        siblings = [v for v in valid if v.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
        options = close or siblings[:12]
        if options:
            hints.append(f"'{key}' is not a valid key; valid alternatives: {', '.join(options)}")
    if keep_message:
        return "\n".join([message, *hints])
    return "\n".join(hints) if hints else brief_parser_message(message)


def brief_parser_message(message: str) -> str:
    """A jsonargparse type error in one line, ``model.temperature: expected float, got
    'abc'``, without the subtypes it tried or its ``NestedArg`` dumps; any other error: its
    first line."""
    keys = re.findall(r'Parser key "([\w.]+)"', message)
    refused = re.search(r"Option '([\w.]+)' is not accepted", message)
    owner = re.search(r"class_path '([\w.]+)'", message)
    if keys and refused:  # a real option of another class: say whose it is not
        where = f" of {owner.group(1).rsplit('.', 1)[-1]}" if owner else ""
        return f"{keys[0]}.{refused.group(1)} is not an option{where}"
    expected = [t for t in re.findall(r"Expected a <class '([\w.]+)'>", message) if t != "NoneType"]
    value = re.search(r"(?:Got value|Given value): (.+)", message)
    nested = re.search(r"val='(.*?)'\)", message)
    given = nested.group(1) if nested else value.group(1).strip() if value else None
    if not keys or not expected:
        return message.strip().splitlines()[0] if message.strip() else message
    key = keys[0] if len(keys) == 1 else f"{keys[0]}.{keys[-1]}"
    got = f", got {given!r}" if given is not None else ""
    return f"{key}: expected {' or '.join(dict.fromkeys(expected))}{got}"
