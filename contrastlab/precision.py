"""Which precision trains fastest, decided by measurement, and autocast in that precision.

Whether bf16 autocast beats fp32 depends on the device, the network and the input size, not
on CPU flags alone: on one AVX512-BF16 CPU it doubled the speed of a CIFAR-stem ResNet-18 and
did nothing for the torchvision-stem one at 32 px; on a CPU without AMX or AVX512-BF16 it was
slower. So when the user names no precision, :func:`choose_precision` times a few forward +
backward steps of the actual network at the actual batch and view size in each candidate
(fp32 and bf16 autocast; fp16 autocast on GPUs without bf16), picks the fastest, and caches the
decision per (device model, thread count, torch version, network, input size) in
``precision.json`` of the user cache directory (:func:`cache_dir`), so it costs its seconds
once. Training and the evaluation loops share the decision.

A candidate that a one-step probe at a small batch (:data:`PROBE_BATCH`) shows
:data:`HOPELESS` times slower than the fastest is not timed at the full batch: on a CPU without
bf16 arithmetic, bf16 autocast is an order of magnitude slower, and timing it properly would
cost minutes for nothing.

A reading taken while another job shares the device would stay wrong for good, so every
candidate is timed :data:`REPEATS` times, interleaved; when one candidate's readings disagree by
more than :data:`AGREEMENT` the decision serves this process only and is not cached. A run that
trains faster than the cached reading of its own precision (:func:`contradicts`: a training
step does at least the measured forward + backward) proves that reading disturbed, and
:func:`forget_precision` drops it. ``CONTRASTLAB_REMEASURE=1`` ignores the cache once;
``CONTRASTLAB_PRECISION=<name>`` (:func:`fixed_precision`) replaces every measurement with that
precision.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from contrastlab.io import atomic_write
from contrastlab.options import OptionError

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""Lightning precision names that mean autocast, and their dtype (anything else: fp32)."""

Timer = Callable[[], float]

REPEATS = 2
"""Readings of each candidate, interleaved (A B A B), so that a passing load shows."""
AGREEMENT = 0.25
"""The largest relative spread, ``(max - min) / max``, of one candidate's readings that is
trusted enough to cache: quiet machines stay within a few percent."""
CONTRADICTION = 1.1
"""A run training more than this factor faster (per process) than the backbone's measured
forward + backward in the same precision contradicts the measurement."""
REMEASURE_ENV = "CONTRASTLAB_REMEASURE"
FIXED_ENV = "CONTRASTLAB_PRECISION"
"""A Lightning precision name that replaces every measurement (:func:`fixed_precision`)."""
PRECISIONS = ("32-true", *AUTOCAST_DTYPES)
"""The precisions a run may take without ``--trainer.precision``."""
PROBE_BATCH = 8
"""Before the full measurement, each candidate takes one step (after a warm-up) at this batch."""
HOPELESS = 3.0
"""A candidate whose probe runs this many times slower than the fastest probe is not measured
at the full batch: no batch size turns such a gap around, and timing it costs minutes (bf16
autocast on a CPU without bf16 arithmetic, an AVX2-only AMD EPYC: 10-13x slower than fp32 for
a ResNet-18 step; the full measurement of an evaluation pass took 425 s of a test run)."""

_decided: dict[str, PrecisionChoice] = {}
"""This process's decisions by cache key (the evaluation loops ask once per batch)."""


@functools.cache
def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles and the kernel lets this process use them."""
    try:  # private probes: guard against their absence or failure in other torch releases
        return bool(torch.cpu._is_amx_tile_supported() and torch.cpu._init_amx())
    except (AttributeError, RuntimeError):
        return False


def bf16_is_fast(device: torch.device | str) -> bool:
    """The static guess, for when nothing can be measured: GPUs with bf16, CPUs with AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_amx()


def default_precision() -> str:
    """The static guess as a Lightning precision (used where no measurement can be made, e.g.
    several processes starting at once): bf16 autocast on GPUs with bf16 and CPUs with AMX,
    fp16 autocast on older GPUs, fp32 otherwise."""
    if torch.cuda.is_available():
        return "bf16-mixed" if bf16_is_fast("cuda") else "16-mixed"
    return "bf16-mixed" if bf16_is_fast("cpu") else "32-true"


def fixed_precision() -> str | None:
    """``$CONTRASTLAB_PRECISION`` when set: the precision of every run and evaluation loop that
    would otherwise measure one (``--trainer.precision`` still wins), for machines where a
    measurement costs more than it saves (a test suite whose every run starts with an empty
    cache, jobs that each land on a fresh node). An unknown name is an error."""
    value = os.environ.get(FIXED_ENV, "")
    if value and value not in PRECISIONS:
        raise OptionError(f"{FIXED_ENV}={value!r}: expected one of {', '.join(PRECISIONS)}")
    return value or None


def candidates(device: torch.device | str) -> tuple[str, ...]:
    """The precisions worth timing on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed", "32-true")
    return ("bf16-mixed", "32-true")


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast for a Lightning precision name (a no-op for fp32)."""
    device = torch.device(device)
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None)


# ----------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """``$CONTRASTLAB_CACHE``, else ``$XDG_CACHE_HOME/contrastlab``, else
    ``~/.cache/contrastlab``."""
    if os.environ.get("CONTRASTLAB_CACHE"):
        return Path(os.environ["CONTRASTLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "contrastlab"


def cache_file() -> Path:
    return cache_dir() / "precision.json"


def device_name(device: torch.device | str) -> str:
    """The device's model: the GPU's name, or the CPU's model name and its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


@functools.cache
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def network_digest(network: nn.Module, channels_last: bool) -> str:
    """Identifies a network's architecture (its module tree with every layer's shape) and
    memory layout, not its weights."""
    text = f"{type(network).__qualname__}\n{network!r}\nchannels_last={channels_last}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(
    device: torch.device | str, network: nn.Module, image_size: int, channels_last: bool
) -> str:
    return json.dumps(
        {
            "device": device_name(device),
            "torch": torch.__version__,
            "network": network_digest(network, channels_last),
            "input": [3, image_size, image_size],
        },
        sort_keys=True,
    )


def read_cache() -> dict[str, dict]:
    """The cached decisions; an unreadable file counts as empty (it is only a cache)."""
    try:
        entries = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def write_cache_entry(key: str, entry: dict) -> None:
    write_cache({**read_cache(), key: entry})


def write_cache(entries: dict[str, dict]) -> None:
    text = json.dumps(entries, indent=1, sort_keys=True).encode()
    with contextlib.suppress(OSError):  # a read-only home must not stop a run
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_file(), lambda f: f.write(text))


# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class PrecisionChoice:
    """The fastest precision and the images/s measured for every candidate."""

    precision: str
    rates: dict[str, float]
    device: str
    cached: bool = False
    spread: float = 0.0
    """The largest relative spread of one candidate's repeated readings."""
    dropped: dict[str, float] = dataclasses.field(default_factory=dict)
    """Candidates left out after the probe: how many times slower than the fastest probe."""
    fixed: bool = False
    """Taken from :func:`fixed_precision`, not measured."""

    @property
    def trusted(self) -> bool:
        return self.spread <= AGREEMENT

    def message(self) -> str:
        """``bf16-mixed: 186 img/s vs 32-true: 87 img/s on <device>`` (fastest first)."""
        if self.fixed:
            return f"precision {self.precision} on {self.device} ({FIXED_ENV}, not measured)"
        ranked = sorted(self.rates.items(), key=lambda item: -item[1])
        figures = " vs ".join(f"{name}: {rate:.0f} img/s" for name, rate in ranked)
        figures += "".join(
            f" ({name} {slower:.0f}x slower in a probe, not measured further)"
            for name, slower in self.dropped.items()
        )
        if self.cached:
            when = f"measured earlier, cached in {cache_file()}; {REMEASURE_ENV}=1 measures again"
        elif not self.trusted:
            when = (
                f"measured, but repeated readings differed by {self.spread:.0%}: a busy machine? "
                "not cached, the next run measures again"
            )
        else:
            when = "measured"
        return f"precision {figures} on {self.device} ({when})"


def images_per_second(
    network: nn.Module,
    precision: str,
    batch_size: int,
    image_size: int,
    device: torch.device | str,
    channels_last: bool = True,
    timer: Timer = time.perf_counter,
    min_seconds: float = 2.0,
    max_steps: int = 3,
) -> float:
    """Forward + backward steps of a copy of ``network`` (its weights and statistics stay as
    they are) on random images ``(batch_size, 3, image_size, image_size)``: one warm-up step,
    then timed steps until ``max_steps`` or ``min_seconds``. Draws nothing from torch's global
    RNG. ``timer`` is read inside the autocast region (a test can fake it per precision)."""
    device = torch.device(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode(False):
        model = copy.deepcopy(network).to(device, memory_format=layout).train()
        generator = torch.Generator(device).manual_seed(0)
        shape = (batch_size, 3, image_size, image_size)
        images = torch.randn(shape, generator=generator, device=device)
        images = images.contiguous(memory_format=layout)

    def step() -> None:
        model(images).float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # callers may be evaluating under no_grad or inference_mode
    with torch.inference_mode(False), torch.enable_grad(), autocast(precision, device):
        step()  # warm-up: kernel selection, allocations
        steps, elapsed, start = 0, 0.0, timer()
        while steps < max_steps and elapsed < min_seconds:
            step()
            steps, elapsed = steps + 1, timer() - start
    return steps * batch_size / max(elapsed, 1e-9)


def cached_precision(
    network: nn.Module, image_size: int, device: torch.device | str, channels_last: bool = True
) -> PrecisionChoice | None:
    """The decision made earlier for this (device, torch, network, input size), if any."""
    key = cache_key(device, network, image_size, channels_last)
    if key not in _decided:
        remeasure = os.environ.get(REMEASURE_ENV, "") not in ("", "0")
        entry = {} if remeasure else read_cache().get(key) or {}
        _decided[key] = PrecisionChoice(
            entry.get("precision", ""),
            entry.get("rates", {}),
            device_name(device),
            cached=True,
            dropped=entry.get("dropped", {}),
        )
    known = _decided[key]
    return known if known.precision in candidates(device) else None


def choose_precision(
    network: nn.Module,
    batch_size: int,
    image_size: int,
    device: torch.device | str,
    channels_last: bool = True,
    timer: Timer = time.perf_counter,
) -> PrecisionChoice:
    """The fastest of :func:`candidates` for this network, batch and view size on ``device``:
    the cached decision when this (device, torch, network, input size) was measured before,
    else measured now (:func:`images_per_second`, :data:`REPEATS` interleaved readings of each,
    the best reading counting) and cached when the readings agree (:data:`AGREEMENT`); with
    :func:`fixed_precision` set, that precision, unmeasured."""
    fixed = fixed_precision()
    if fixed is not None:
        return PrecisionChoice(fixed, {}, device_name(device), fixed=True)
    known = cached_precision(network, image_size, device, channels_last)
    if known is not None:
        return known
    dropped = hopeless_candidates(network, batch_size, image_size, device, channels_last, timer)
    names = [name for name in candidates(device) if name not in dropped]
    readings: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(REPEATS):
        for name, rates in readings.items():
            args = (network, name, batch_size, image_size, device, channels_last, timer)
            rates.append(images_per_second(*args))
    choice = PrecisionChoice(
        precision=max(readings, key=lambda name: max(readings[name])),
        rates={name: max(rates) for name, rates in readings.items()},  # the least disturbed
        device=device_name(device),
        spread=max(1 - min(rates) / max(rates) for rates in readings.values()),
        dropped=dropped,
    )
    key = cache_key(device, network, image_size, channels_last)
    if choice.trusted:
        entry = {"precision": choice.precision, "rates": choice.rates, "batch_size": batch_size}
        entry |= {"dropped": dropped} if dropped else {}
        write_cache_entry(key, entry)
    _decided[key] = dataclasses.replace(choice, cached=choice.trusted)
    return choice


def probe_batch(network: nn.Module) -> int:
    """:data:`PROBE_BATCH`, or the smallest batch that every split BatchNorm of ``network``
    (a module with ``num_splits``) divides into groups of at least two images."""
    splits = math.lcm(*(getattr(m, "num_splits", 1) for m in network.modules()))
    return splits * max(2, math.ceil(PROBE_BATCH / splits))


def hopeless_candidates(
    network: nn.Module,
    batch_size: int,
    image_size: int,
    device: torch.device | str,
    channels_last: bool = True,
    timer: Timer = time.perf_counter,
) -> dict[str, float]:
    """The candidates :data:`HOPELESS` times slower than the fastest in a probe (one step at
    :func:`probe_batch` after a warm-up), each with its factor; none when the batch is no larger
    than the probe's or there is nothing to choose between."""
    names = candidates(device)
    probe = probe_batch(network)
    if batch_size <= probe or len(names) < 2:
        return {}
    args = (probe, image_size, device, channels_last, timer)
    probes = {name: images_per_second(network, name, *args, max_steps=1) for name in names}
    fastest = max(probes.values())
    return {name: fastest / rate for name, rate in probes.items() if rate * HOPELESS < fastest}


def contradicts(choice: PrecisionChoice, trained_per_process: float) -> bool:
    """Whether a run that trained at ``trained_per_process`` images/s in ``choice.precision``
    proves the measurement of that precision disturbed: each training step does at least one
    forward + backward of the backbone on the batch, so it cannot be faster than the
    backbone's alone (beyond :data:`CONTRADICTION`'s allowance for timing noise)."""
    measured = choice.rates.get(choice.precision)
    return measured is not None and trained_per_process > CONTRADICTION * measured


def forget_precision(
    network: nn.Module, image_size: int, device: torch.device | str, channels_last: bool = True
) -> None:
    """Drop the decision for this (device, torch, network, input size) from the cache file;
    this process keeps using it."""
    key = cache_key(device, network, image_size, channels_last)
    entries = read_cache()
    if entries.pop(key, None) is not None:
        write_cache(entries)


def autocast_for(
    network: nn.Module,
    image_size: int,
    device: torch.device | str,
    channels_last: bool = True,
    batch_size: int = 128,
) -> contextlib.AbstractContextManager:
    """Autocast in the precision :func:`choose_precision` decided for this network and input
    size (training's decision when it ran here; measured at ``batch_size`` otherwise): the
    evaluation loops outside the trainer. Callers cast outputs back to float32."""
    choice = choose_precision(network, batch_size, image_size, device, channels_last)
    return autocast(choice.precision, device)
