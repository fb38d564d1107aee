"""Synthetic hard negatives: SynCo's six kinds, with MoCHi as a preset (SPEC.md sections 2-3).

For each query ``q`` the pool is the ``n_hard`` bank entries with the largest ``q . n``
(detached top-N). Each synthetic draws its source(s) uniformly with replacement from the pool,
independently per query and per kind, and is a detached unit vector ``s``; its logit ``q . s``
carries gradient into ``q`` only. Kinds, in column order (:attr:`SyntheticNegatives.layout`):

1. interpolated  ``s = norm(a sg(q) + (1 - a) n)``,   ``a ~ U(0, 0.5)``
2. extrapolated  ``s = norm(sg(q) + b (n - sg(q)))``, ``b ~ U(1, 1.5)``
3. mixup         ``s = norm(g n_i + (1 - g) n_j)``,   ``g ~ U(0, 1)``
4. noise         ``s = norm(n + e)``,                 ``e ~ N(0, sigma^2 I)``
5. perturbed     ``s = norm(n + delta sg(q))``        (a gradient step on ``q . n``)
6. adversarial   ``s = norm(n + eta sign(sg(q)))``

:meth:`SyntheticNegatives.forward` computes the logits without building ``(B, n_syn, d)``
tensors: with ``c = q . n`` (the bank logits, carrying gradient) and ``q . sg(q)`` (value 1,
gradient ``sg(q)``), kinds 1, 2 and 5 are ratios whose norms follow from ``c`` alone, e.g.
``||a q + (1 - a) n||^2 = a^2 + (1 - a)^2 + 2 a (1 - a) c``; kinds 3 and 6 need one detached dot
product per synthetic (``n_i . n_j``, ``n . sign(q)``); only kind 4 draws a ``d``-dimensional
noise vector per synthetic. :meth:`SyntheticNegatives.materialize` builds the vectors
themselves from the same draws and is the reference the fast path is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

KINDS = ("interpolated", "extrapolated", "mixup", "noise", "perturbed", "adversarial")


@dataclass(frozen=True)
class Pool:
    """The hard pool of each query: bank rows ``index (B, N)`` and their logits ``logits (B, N)``
    (``q . n``, with gradient into ``q`` when the bank logits had it)."""

    index: torch.Tensor
    logits: torch.Tensor


class SyntheticNegatives:
    """SynCo's synthetic hard negatives as a plain-PyTorch callable (see the module docstring).

    Every count may be 0, which removes exactly that kind. ``__call__`` returns ``(B, n_syn)``
    logits ``q . s``; ``materialize`` returns the ``(B, n_syn, d)`` unit vectors ``s``. With
    the same generator state both consume the same random draws, so ``synth(q, bank,
    generator=g1)`` equals ``(synth.materialize(q, bank, generator=g2) * q[:, None]).sum(-1)``
    when ``g1`` and ``g2`` start in the same state.
    """

    def __init__(
        self,
        n_hard: int = 1024,
        interpolated: int = 256,
        extrapolated: int = 256,
        mixup: int = 256,
        noise: int = 64,
        perturbed: int = 64,
        adversarial: int = 64,
        sigma: float = 0.01,
        delta: float = 0.01,
        eta: float = 0.01,
    ) -> None:
        counts = dict(
            interpolated=interpolated,
            extrapolated=extrapolated,
            mixup=mixup,
            noise=noise,
            perturbed=perturbed,
            adversarial=adversarial,
        )
        for name, value in {"n_hard": n_hard, **counts}.items():
            if value < 0:
                raise ValueError(f"SyntheticNegatives.{name} must be >= 0, got {value}")
        for name, value in {"sigma": sigma, "delta": delta, "eta": eta}.items():
            if not value >= 0:
                raise ValueError(f"SyntheticNegatives.{name} must be >= 0, got {value}")
        if n_hard == 0 and any(counts.values()):
            raise ValueError("SyntheticNegatives needs n_hard >= 1 to make synthetics")
        self.n_hard, self.counts = n_hard, counts
        self.sigma, self.delta, self.eta = sigma, delta, eta

    @classmethod
    def synco(cls, **overrides) -> SyntheticNegatives:
        """The SynCo paper's defaults: N=1024; 256 each of kinds 1-3, 64 each of kinds 4-6."""
        return cls(**overrides)

    @classmethod
    def mochi(cls, n_hard: int = 1024, s: int = 512, s_prime: int = 256) -> SyntheticNegatives:
        """MoCHi (N, s, s'): ``s`` mixup and ``s'`` query-interpolated synthetics."""
        return cls(
            n_hard=n_hard,
            interpolated=s_prime,
            extrapolated=0,
            mixup=s,
            noise=0,
            perturbed=0,
            adversarial=0,
        )

    def config(self) -> dict[str, float | int]:
        """Constructor arguments as plain values (for checkpoints and logs)."""
        return {
            "n_hard": self.n_hard,
            **self.counts,
            "sigma": self.sigma,
            "delta": self.delta,
            "eta": self.eta,
        }

    @property
    def layout(self) -> list[tuple[str, int]]:
        """``[(kind, count), ...]`` of the kinds in use, in column order."""
        return [(kind, self.counts[kind]) for kind in KINDS if self.counts[kind] > 0]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}={c}" for k, c in self.layout)
        return f"SyntheticNegatives(n_hard={self.n_hard}, {kinds})"

    # ------------------------------------------------------------------ shared draws

    def hard_pool(
        self,
        q: torch.Tensor,
        bank: torch.Tensor,
        bank_logits: torch.Tensor | None,
        exclude: torch.Tensor | None,
    ) -> Pool:
        """Top-``n_hard`` of ``q . bank`` per query (detached selection; ``exclude`` (B, M) bool
        marks entries that may not enter the pool, e.g. keys of the query's own image)."""
        logits = q @ bank.T if bank_logits is None else bank_logits
        scores = logits.detach()
        if exclude is not None:
            scores = scores.masked_fill(exclude, float("-inf"))
        available = bank.shape[0]
        if exclude is not None:  # every row keeps the same pool size, all of it allowed
            available -= int(exclude.sum(dim=1).max())
        if available < 1:
            raise ValueError("every bank entry is excluded for some query: no hard pool")
        top = scores.topk(min(self.n_hard, available), dim=1).indices
        return Pool(top, logits.gather(1, top))

    def _draws(
        self,
        batch: int,
        dim: int,
        pool_size: int,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Every random quantity, kind by kind in column order (so both paths consume the
        generator identically): source positions in the pool and coefficients."""

        def pick(count: int) -> torch.Tensor:
            return torch.randint(0, pool_size, (batch, count), generator=generator, device=device)

        def uniform(count: int, low: float, high: float) -> torch.Tensor:
            u = torch.rand(batch, count, generator=generator, device=device)
            return low + (high - low) * u

        draws: dict[str, dict[str, torch.Tensor]] = {}
        for kind, count in self.layout:
            if kind == "interpolated":
                draws[kind] = {"i": pick(count), "a": uniform(count, 0.0, 0.5)}
            elif kind == "extrapolated":
                draws[kind] = {"i": pick(count), "b": uniform(count, 1.0, 1.5)}
            elif kind == "mixup":
                draws[kind] = {"i": pick(count), "j": pick(count), "g": uniform(count, 0.0, 1.0)}
            elif kind == "noise":
                e = torch.randn(batch, count, dim, generator=generator, device=device)
                draws[kind] = {"i": pick(count), "e": e * self.sigma}
            else:  # perturbed, adversarial: sources only
                draws[kind] = {"i": pick(count)}
        return draws

    def _prepare(
        self,
        q: torch.Tensor,
        bank: torch.Tensor,
        bank_logits: torch.Tensor | None,
        exclude: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Pool, dict[str, dict[str, torch.Tensor]]]:
        if q.ndim != 2 or bank.ndim != 2 or q.shape[1] != bank.shape[1]:
            raise ValueError(
                f"need q (B, d) and bank (M, d), got {tuple(q.shape)} and {tuple(bank.shape)}"
            )
        pool = self.hard_pool(q, bank, bank_logits, exclude)
        draws = self._draws(len(q), q.shape[1], pool.index.shape[1], q.device, generator)
        return pool, draws

    # ------------------------------------------------------------------ fast logits

    def __call__(
        self,
        q: torch.Tensor,
        bank: torch.Tensor,
        bank_logits: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(B, n_syn)`` logits ``q . s`` of every synthetic, gradient into ``q`` only."""
        if self.total == 0:
            return q.new_zeros(len(q), 0)
        pool, draws = self._prepare(q, bank, bank_logits, exclude, generator)
        q_bar = q.detach()
        q_self = (q * q_bar).sum(1, keepdim=True)  # value ||q||^2 = 1, gradient sg(q)
        columns = []
        for kind, _ in self.layout:
            d = draws[kind]
            c = pool.logits.gather(1, d["i"])  # q . n of each source, with gradient
            columns.append(getattr(self, f"_{kind}_logits")(q, q_bar, q_self, c, pool, bank, d))
        return torch.cat(columns, dim=1)

    @staticmethod
    def _two_point(
        x: torch.Tensor, y_logit: torch.Tensor, w: torch.Tensor, xy: torch.Tensor
    ) -> torch.Tensor:
        """``q . norm(w x + (1 - w) y)`` for unit ``x``, ``y``: the numerator carries the
        gradient of ``q . x`` (= ``x``) and ``q . y``; the norm uses detached ``x . y``."""
        norm2 = w**2 + (1 - w) ** 2 + 2 * w * (1 - w) * xy.detach()
        return (w * x + (1 - w) * y_logit) / norm2.clamp_min(1e-12).sqrt()

    def _interpolated_logits(self, q, q_bar, q_self, c, pool, bank, d):
        return self._two_point(q_self, c, d["a"], c)

    def _extrapolated_logits(self, q, q_bar, q_self, c, pool, bank, d):
        return self._two_point(q_self, c, 1 - d["b"], c)

    def _mixup_logits(self, q, q_bar, q_self, c, pool, bank, d):
        c_j = pool.logits.gather(1, d["j"])
        n_i, n_j = self._sources(pool, bank, d["i"]), self._sources(pool, bank, d["j"])
        return self._two_point(c, c_j, d["g"], (n_i * n_j).sum(-1))

    def _noise_logits(self, q, q_bar, q_self, c, pool, bank, d):
        e = d["e"]
        n = self._sources(pool, bank, d["i"])
        norm2 = 1 + 2 * (n * e).sum(-1) + (e * e).sum(-1)
        q_e = torch.einsum("bd,bkd->bk", q, e)
        return (c + q_e) / norm2.sqrt()

    def _perturbed_logits(self, q, q_bar, q_self, c, pool, bank, d):
        norm2 = 1 + self.delta**2 * q_self.detach() + 2 * self.delta * c.detach()
        return (c + self.delta * q_self) / norm2.sqrt()

    def _adversarial_logits(self, q, q_bar, q_self, c, pool, bank, d):
        sign = torch.sign(q_bar)
        n_sign = torch.einsum("bkd,bd->bk", self._sources(pool, bank, d["i"]), sign)
        norm2 = 1 + 2 * self.eta * n_sign + self.eta**2 * (sign * sign).sum(1, keepdim=True)
        return (c + self.eta * (q * sign).sum(1, keepdim=True)) / norm2.sqrt()

    @staticmethod
    def _sources(pool: Pool, bank: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        """Detached source vectors ``(B, k, d)`` for pool positions ``picks (B, k)``."""
        return bank.detach()[pool.index.gather(1, picks)]

    # ------------------------------------------------------------------ reference vectors

    def materialize(
        self,
        q: torch.Tensor,
        bank: torch.Tensor,
        bank_logits: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(B, n_syn, d)`` detached unit synthetic vectors, straight from the equations."""
        if self.total == 0:
            return q.new_zeros(len(q), 0, q.shape[1])
        pool, draws = self._prepare(q, bank, bank_logits, exclude, generator)
        q_bar = q.detach()[:, None, :]
        vectors = []
        for kind, _ in self.layout:
            d = draws[kind]
            n = self._sources(pool, bank, d["i"])
            if kind == "interpolated":
                a = d["a"][..., None]
                s = a * q_bar + (1 - a) * n
            elif kind == "extrapolated":
                s = q_bar + d["b"][..., None] * (n - q_bar)
            elif kind == "mixup":
                g = d["g"][..., None]
                s = g * n + (1 - g) * self._sources(pool, bank, d["j"])
            elif kind == "noise":
                s = n + d["e"]
            elif kind == "perturbed":
                s = n + self.delta * q_bar
            else:
                s = n + self.eta * torch.sign(q_bar)
            vectors.append(F.normalize(s, dim=-1))
        return torch.cat(vectors, dim=1).detach()

    def kinds_of_columns(self) -> list[str]:
        """The kind of every output column, in order."""
        return [kind for kind, count in self.layout for _ in range(count)]
