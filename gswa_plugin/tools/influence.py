"""How far can GSWA's weights move the language model? A check before spending GPU hours.

[`measure_influence`][gswa_plugin.tools.influence.measure_influence] runs the model twice on the same inputs, once with
every tile weight
forced to 1 (uniform) and once with a fixed peaked pattern (one tile ``ratio`` times heavier than
the others, mean weight still 1), through the application mode in force, and reports how far the
next-token distribution moved: the KL divergence, the largest logit change, the logit scale for
context, and whether the top token changed. A configuration whose influence is near zero cannot
learn much, whatever the training budget (see the docs page "Application modes").

[`compare_modes`][gswa_plugin.tools.influence.compare_modes] repeats the measurement for every mode on the same model
and inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from gswa_plugin import api
from gswa_plugin.apply import MODES
from gswa_plugin.config import GSWAConfig, resolve_config
from gswa_plugin.errors import NotEnabledError
from gswa_plugin.handle import get_handle, is_enabled
from gswa_plugin.layout import TileLayout


@dataclass
class Influence:
    """What a peaked weighting does to the next-token distribution.

    Attributes:
        mode: application mode measured.
        kl: ``KL(p_uniform || p_peaked)`` of the next-token distribution at the last position,
            averaged over the batch (nats).
        max_logit_change: largest absolute change of a next-token logit.
        logit_scale: standard deviation of the uniform run's next-token logits (what a change
            should be compared with).
        top1_changed: fraction of batch items whose most likely next token changed.
        peak_tile: index of the heavy tile in each image (clamped to the image's tile count).
        ratio: how many times heavier the peak tile is than each other tile.
    """

    mode: str
    kl: float
    max_logit_change: float
    logit_scale: float
    top1_changed: float
    peak_tile: int
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peaked_weights(n_tiles: int, peak_tile: int = 0, ratio: float = 10.0) -> torch.Tensor:
    """Tile weights with mean 1 and tile ``peak_tile`` ``ratio`` times heavier than the rest.

    ``w_k = T r / (r + T - 1)`` and ``w_i = T / (r + T - 1)`` otherwise (GSWA's own form
    ``T * softmax``, with a logit of ``log r`` on the peak tile).
    """
    w = torch.ones(n_tiles)
    if n_tiles > 1:
        w[min(peak_tile, n_tiles - 1)] = ratio
    return n_tiles * w / w.sum()


class FixedWeights(nn.Module):
    """Stands in for the GSWA module: returns a fixed weight per view for any layout.

    Args:
        config: the GSWA config in force (its ``global_weight`` is kept for thumbnails).
        peak_tile: heavy tile of each image, or ``None`` for uniform weights (all 1).
        ratio: weight ratio of the peak tile to the others.
    """

    def __init__(self, config: GSWAConfig, peak_tile: int | None, ratio: float):
        super().__init__()
        self.config = config
        self.peak_tile = peak_tile
        self.ratio = ratio

    def forward(self, summaries: torch.Tensor, layout: TileLayout) -> torch.Tensor:
        out = []
        for n in layout.views_per_image:
            has_thumb = layout.has_global(n)
            n_tiles = n - 1 if has_thumb else n
            tiles = peaked_weights(n_tiles, self.peak_tile or 0, self.ratio) if self.peak_tile is not None else torch.ones(n_tiles)
            if n_tiles == 1 and not has_thumb:
                tiles = torch.ones(1)
            glob = torch.full((1,), float(self.config.global_weight))
            if has_thumb:
                tiles = torch.cat([glob, tiles]) if layout.global_position == "first" else torch.cat([tiles, glob])
            out.append(tiles)
        return torch.cat(out).to(summaries.device)


def _next_token_logits(model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits[:, -1].float()


def measure_influence(
    model: nn.Module, inputs: Mapping[str, Any], peak_tile: int = 0, ratio: float = 10.0
) -> Influence:
    """Influence of a peaked weighting on the next token, in the mode GSWA is enabled with.

    Args:
        model: a host model with GSWA enabled (its trained weights are not used: the
            measurement forces uniform, then peaked weights).
        inputs: the model's inputs (e.g. a processor's output with an image and a prompt).
        peak_tile: the heavy tile of each image.
        ratio: how many times heavier the peak tile is than each other tile.

    Raises:
        NotEnabledError: GSWA is not enabled on ``model``.
    """
    handle = get_handle(model)
    real = handle.module
    try:
        handle.module = FixedWeights(handle.config, None, ratio)
        base = _next_token_logits(model, inputs)
        handle.module = FixedWeights(handle.config, peak_tile, ratio)
        moved = _next_token_logits(model, inputs)
    finally:
        handle.module = real
    logp, logq = torch.log_softmax(base, -1), torch.log_softmax(moved, -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean()
    return Influence(
        mode=handle.config.mode,
        kl=float(kl),
        max_logit_change=float((moved - base).abs().max()),
        logit_scale=float(base.std(dim=-1).mean()),
        top1_changed=float((moved.argmax(-1) != base.argmax(-1)).float().mean()),
        peak_tile=peak_tile,
        ratio=ratio,
    )


def compare_modes(
    model: nn.Module,
    inputs: Mapping[str, Any],
    config: GSWAConfig | dict[str, Any] | str | None = None,
    modes: Sequence[str] = MODES,
    peak_tile: int = 0,
    ratio: float = 10.0,
) -> list[Influence]:
    """[`measure_influence`][gswa_plugin.tools.influence.measure_influence] in every mode of ``modes`` on the same
    model and inputs.

    If GSWA is enabled on ``model``, its config is used (with each mode in turn) and the model
    is left enabled as before, with its GSWA parameters restored; otherwise ``config`` is used
    and the model is left without GSWA.
    """
    before = None
    if is_enabled(model):
        handle = get_handle(model)
        before = (handle.config, {k: v.clone() for k, v in handle.module.state_dict().items()})
        cfg = handle.config
        api.disable(model)
    else:
        cfg = resolve_config(config)
    results = []
    try:
        for mode in modes:
            api.enable(model, cfg.replace(mode=mode))
            try:
                results.append(measure_influence(model, inputs, peak_tile, ratio))
            finally:
                api.disable(model)
    finally:
        if before is not None:
            api.enable(model, before[0]).module.load_state_dict(before[1])
    return results


__all__ = ["FixedWeights", "Influence", "NotEnabledError", "compare_modes", "measure_influence", "peaked_weights"]
