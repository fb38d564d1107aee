"""What the ``contrastlab`` command prints: its own lines, not third-party banners.

By default the console holds contrastlab's lines only (``contrastlab: ...`` notes on stderr, the
run's settings and data in one line each, progress bars, the summary): Lightning's start-up
banners ("GPU available: ...", the model summary, its logger advertisement) and its warnings are
off. ``--verbose`` anywhere on the command line, or ``CONTRASTLAB_VERBOSE=1`` in the
environment (which the processes a command starts inherit), brings them back.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "CONTRASTLAB_VERBOSE"
THIRD_PARTY_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_fabric")
"""Loggers whose INFO lines are banners (devices, precision plug-in, seed, model summary)."""
THIRD_PARTY_WARNINGS = r"(lightning|lightning_fabric|pytorch_lightning)(\.|$)"
"""Modules whose warnings are advice for Lightning users, not for contrastlab's."""


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def take_verbose_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--verbose``; its presence sets ``CONTRASTLAB_VERBOSE=1`` for this
    process and the ones it starts (DDP workers, a grid's cells)."""
    if VERBOSE_FLAG in argv:
        os.environ[VERBOSE_ENV] = "1"
    return [arg for arg in argv if arg != VERBOSE_FLAG]


def quiet_third_parties() -> None:
    """Silence Lightning's INFO banners and its warnings, unless verbose."""
    if is_verbose():
        return
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=THIRD_PARTY_WARNINGS)


def is_first_process() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0


def note(message: str) -> None:
    """One line for the user on stderr, ``contrastlab: <message>`` (first process only)."""
    if is_first_process():
        print(f"contrastlab: {message}", file=sys.stderr, flush=True)
