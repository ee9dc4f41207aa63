"""Statistics of GSWA tile weights and the paper's failure signatures, with no host code.

Used by the training callback
([`gswa_plugin.integrations.transformers.GSWADiagnosticsCallback`][gswa_plugin.integrations.transformers.callback.GSWADiagnosticsCallback]) and by
``gswa diagnose``. Everything here takes plain tensors: the per-image tile weights that
[`gswa_plugin.last_weights`][gswa_plugin.api.last_weights] returns (thumbnail excluded, mean 1 per image) and, where
available, the GSWA parameters' gradients.

Statistics (each a float averaged over the images that have at least two tiles; an image with a
single view carries no weighting and is left out):

* ``entropy_rel``: entropy of the image's tile distribution ``p = w / sum(w)`` divided by
  ``log(T)``; 1 means uniform weights, 0 means one tile takes everything.
* ``max_min_ratio``: largest over smallest tile weight (1 when uniform).
* ``top_share``: the share ``max(p)`` of the heaviest tile (``1/T`` when uniform).
* ``top_share_excess``: ``top_share`` rescaled so that uniform is 0 and one tile taking
  everything is 1: ``(max(p) - 1/T) / (1 - 1/T)``.
* ``weight_std``, ``weight_max``, ``weight_min``: spread and extremes of the weights.
* ``thumbnail_ratio`` (when thumbnail weights are given): thumbnail weight over the mean tile
  weight of the same image.
* ``grad_norm`` (when gradients are given): L2 norm of all GSWA gradients.

Failure signatures named by the paper (see [`failure_signatures`][gswa_plugin.tools.diagnostics.failure_signatures]):
``uniform`` (weights stuck at 1/N: GSWA is not learning), ``thumbnail_dominance`` (the global
view outweighs the tiles), ``tile_dominance`` (one tile takes nearly all the weight, the others
are switched off) and ``vanishing_gradients`` (GSWA's gradients collapse to about zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

#: Names of the failure signatures [`failure_signatures`][gswa_plugin.tools.diagnostics.failure_signatures] can report.
SIGNATURES: tuple[str, ...] = ("uniform", "thumbnail_dominance", "tile_dominance", "vanishing_gradients")


@dataclass
class Thresholds:
    """Where a statistic turns into a warning. Every field maps to a key of the recipe's
    ``diagnostics:`` block.

    Attributes:
        uniform_entropy: ``entropy_rel`` at or above this counts as uniform weights.
        uniform_max_min: and ``max_min_ratio`` at or below this (both must hold).
        tile_dominance_share: ``top_share_excess`` at or above this counts as one tile dominating.
        thumbnail_ratio: ``thumbnail_ratio`` at or above this counts as thumbnail dominance.
        min_grad_norm: a GSWA gradient norm at or below this counts as vanished.
    """

    uniform_entropy: float = field(default=0.9999, metadata={"help": "entropy_rel at or above this is 'uniform'."})
    uniform_max_min: float = field(default=1.001, metadata={"help": "and max/min ratio at or below this."})
    tile_dominance_share: float = field(
        default=0.9, metadata={"help": "top_share_excess at or above this is 'tile_dominance'."}
    )
    thumbnail_ratio: float = field(
        default=10.0, metadata={"help": "thumbnail weight / mean tile weight at or above this is 'thumbnail_dominance'."}
    )
    min_grad_norm: float = field(
        default=1e-12, metadata={"help": "GSWA gradient norm at or below this is 'vanishing_gradients'."}
    )


def _per_image(tile_weights: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [w.detach().float().flatten().cpu() for w in tile_weights if w.numel() >= 2]


def weight_stats(
    tile_weights: Sequence[torch.Tensor],
    thumbnail_weights: Sequence[float] | torch.Tensor | None = None,
) -> dict[str, float]:
    """Summary statistics of one forward's tile weights.

    Args:
        tile_weights: per image, the weights of its tiles (thumbnail excluded), as returned by
            [`gswa_plugin.last_weights`][gswa_plugin.api.last_weights].
        thumbnail_weights: optional, per image, the thumbnail's weight (same order); adds
            ``thumbnail_ratio``.

    Returns:
        A dict of floats (see the module docstring). ``images`` counts the images with at least
        two tiles; when it is 0 the other statistics are absent.
    """
    per_image = _per_image(tile_weights)
    out: dict[str, float] = {"images": float(len(per_image))}
    if not per_image:
        return out
    ent, ratio, share, excess, std, wmax, wmin = [], [], [], [], [], [], []
    for w in per_image:
        t = w.numel()
        w = w.clamp_min(0.0)
        total = float(w.sum())
        p = w / total if total > 0 else torch.full_like(w, 1.0 / t)
        nz = p[p > 0]
        ent.append(float(-(nz * nz.log()).sum()) / math.log(t))
        lo = float(w.min())
        ratio.append(float(w.max()) / lo if lo > 0 else math.inf)
        top = float(p.max())
        share.append(top)
        excess.append((top - 1.0 / t) / (1.0 - 1.0 / t))
        std.append(float(w.std(unbiased=False)))
        wmax.append(float(w.max()))
        wmin.append(lo)
    n = len(per_image)
    out.update(
        entropy_rel=sum(ent) / n,
        max_min_ratio=sum(ratio) / n,
        top_share=sum(share) / n,
        top_share_excess=sum(excess) / n,
        weight_std=sum(std) / n,
        weight_max=max(wmax),
        weight_min=min(wmin),
    )
    if thumbnail_weights is not None:
        thumbs = [float(x) for x in (thumbnail_weights.tolist() if torch.is_tensor(thumbnail_weights) else thumbnail_weights)]
        ratios = [
            g / float(w.mean()) for g, w in zip(thumbs, (w.detach().float().flatten() for w in tile_weights))
            if w.numel() >= 2 and float(w.mean()) > 0
        ]
        if ratios:
            out["thumbnail_ratio"] = sum(ratios) / len(ratios)
    return out


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float | None:
    """L2 norm of the gradients of ``parameters`` (``None`` when none has a gradient)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    if not norms:
        return None
    return float(torch.stack(norms).norm())


def failure_signatures(stats: dict[str, float], thresholds: Thresholds | None = None) -> list[str]:
    """The failure signatures present in ``stats`` (from [`weight_stats`][gswa_plugin.tools.diagnostics.weight_stats],
    optionally with
    ``grad_norm`` added), each as a line ``"<signature>: <what was seen and what to do>"``.

    Statistics that are absent are not judged. The caller decides when to look: an untrained
    GSWA starts at exactly uniform weights by design, so ``uniform`` only means something after
    some training steps.
    """
    th = thresholds or Thresholds()
    found: list[str] = []
    ent, ratio = stats.get("entropy_rel"), stats.get("max_min_ratio")
    if ent is not None and ratio is not None and ent >= th.uniform_entropy and ratio <= th.uniform_max_min:
        found.append(
            f"uniform: tile weights are still about 1/N (relative entropy {ent:.6f}, max/min {ratio:.6f}); "
            "GSWA is not learning. Check that its parameters are trainable and reach the optimizer, "
            "and raise the GSWA learning rate (`gswa_learning_rate`)"
        )
    excess = stats.get("top_share_excess")
    if excess is not None and excess >= th.tile_dominance_share:
        found.append(
            f"tile_dominance: one tile takes {stats.get('top_share', float('nan')):.3f} of the weight "
            f"(excess over uniform {excess:.3f}); the other tiles are nearly switched off. Lower the GSWA "
            "learning rate, raise `temperature` or set a `min_weight` floor"
        )
    thumb = stats.get("thumbnail_ratio")
    if thumb is not None and thumb >= th.thumbnail_ratio:
        found.append(
            f"thumbnail_dominance: the thumbnail weighs {thumb:.2f}x the mean tile; the tiles carry little. "
            "Keep `global_weight` at 1 or set a `min_weight` floor"
        )
    g = stats.get("grad_norm")
    if g is not None and g <= th.min_grad_norm:
        found.append(
            f"vanishing_gradients: GSWA's gradient norm is {g:.3e}; no signal reaches its parameters. Check the "
            "freezing policy, that images reach the model, and GSWA's LayerNorms (`identity_init` keeps the "
            "scoring query at zero only at the start)"
        )
    return found


def signature_names(lines: Sequence[str]) -> list[str]:
    """The signature names (``"uniform"``, ...) of lines returned by
    [`failure_signatures`][gswa_plugin.tools.diagnostics.failure_signatures]."""
    return [line.split(":", 1)[0] for line in lines]
