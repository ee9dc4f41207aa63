"""The needle-tile task: does a trained GSWA put its weight where the information is?

Each image is a 3x3 grid of tiles drawn with Pillow. One tile (the *needle*) holds a saturated
filled shape whose colour is the answer to "what colour is the shape ?"; the other eight hold
distractors: grey filled shapes or coloured outlines (so a colour alone does not give the answer
away: an outline's colour is independent of the answer). The real ``InternVLProcessor`` tiles each image into 9 tiles plus the thumbnail, in
InternVL's order (row-major, thumbnail last), and a tiny native ``InternVLForConditionalGeneration``
is trained on CPU to answer with the colour word. A fifth of the images have no needle and the
answer ``tile`` (see :data:`NO_NEEDLE`).

Measured per run: answer accuracy on held-out images, the *hit rate* (fraction of held-out
images with a needle whose largest GSWA weight is on the needle tile; chance 1/9), the mean weight on the
needle tile (1 is uniform), the hit rate per answer colour and wall time. A run's ``seed`` draws
the host's initial weights (GSWA's own parameters from their own generator), the batch order and,
through :func:`data_seeds`, its training and held-out images: the spread between seeds includes
data variation. Tuning uses :data:`DEV_SEEDS` only; :data:`HELDOUT_SEEDS` were drawn once, before
any tuning, for the final table.

Used by ``benchmarks/needle/run.py`` (the full comparison) and by the tests (a CI-sized run).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

#: Answer colours (words of the tiny tokenizer's vocabulary) and their RGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 190, 40),
    "blue": (30, 60, 235),
    "yellow": (240, 220, 20),
}
#: Answer word of an image without a needle (a word of the tiny vocabulary). Without such images the
#: answer set is closed and one colour can be answered by exclusion ("none of the others is there"),
#: so the language model never needs to look at that colour's tile and GSWA gets no signal for it.
NO_NEEDLE = "tile"
#: Fraction of images without a needle.
NO_NEEDLE_FRACTION = 0.2
GRID = 3
QUESTION = "what colour is the shape ?"
#: ``none`` trains the host without GSWA (the baseline); the others are GSWA's application modes.
BENCH_MODES: tuple[str, ...] = ("none", "embed", "value", "attn_bias")


#: Seeds used while developing and tuning (never the held-out ones): ``0-23`` and 8 seeds drawn by
#: ``np.random.default_rng(2415).choice(np.arange(100, 10_000), size=8, replace=False)`` (sorted;
#: the range of the first held-out draw, whose seeds it does not meet). The first dev set, ``0-7``,
#: lost no colour with the configuration that then lost colours on 5 of 10 held-out seeds: too few.
DEV_SEEDS: tuple[int, ...] = (
    *range(24),
    *sorted(int(s) for s in np.random.default_rng(2415).choice(np.arange(100, 10_000), size=8, replace=False)),
)
#: The held-out seeds of the first final table (issue 15, stop 24), drawn once before any tuning by
#: ``np.random.default_rng(15).choice(np.arange(100, 10_000), size=10, replace=False)`` (sorted).
#: Used: their results are published (``results_stop24.md``, ``results_stop24.jsonl``); never tune on them or reuse them.
HELDOUT_SEEDS_STOP24: tuple[int, ...] = tuple(
    sorted(int(s) for s in np.random.default_rng(15).choice(np.arange(100, 10_000), size=10, replace=False))
)
#: The held-out seeds of the current final table, drawn once after tuning on :data:`DEV_SEEDS` and
#: before any run on them, by ``np.random.default_rng(24).choice(np.arange(10_000, 100_000), size=10,
#: replace=False)`` (sorted; above every dev and stop-24 seed). ``tests/test_needle.py`` checks the draw.
HELDOUT_SEEDS: tuple[int, ...] = tuple(
    sorted(int(s) for s in np.random.default_rng(24).choice(np.arange(10_000, 100_000), size=10, replace=False))
)

#: Seeds run after a held-out draw had used them, now treated as development seeds: 80614, the seed of
#: the second draw that lost green with the then-recommended configuration (``summary: mean``).
DEV_SEEDS_EXTRA: tuple[int, ...] = (80614,)
#: What a configuration must reach, vision encoder trained, before a held-out draw may be run for it
#: (written down before the third draw, unchanged from the second apart from the extra seed): on all
#: :data:`DEV_SEEDS` a mean hit rate of at least 93 %, no seed below 80 %, no answer colour below
#: 50 % in any seed; and on every seed of :data:`DEV_SEEDS_EXTRA` every colour at 50 % or more.
DEV_CRITERION: dict[str, float] = {"mean_hit": 0.93, "min_seed_hit": 0.80, "min_colour_hit": 0.50}
#: The third held-out draw, made (and written here) before any run on it:
#: ``np.random.default_rng(26).choice(np.arange(100_000, 1_000_000), size=10, replace=False)`` (sorted;
#: above every seed used before). It is run once, for a configuration that first met
#: :data:`DEV_CRITERION`, fixed and committed before; until then it is unused.
HELDOUT_SEEDS_3: tuple[int, ...] = tuple(
    sorted(int(s) for s in np.random.default_rng(26).choice(np.arange(100_000, 1_000_000), size=10, replace=False))
)


def meets_dev_criterion(dev: dict[int, dict[str, Any]], extra: dict[int, dict[str, Any]]) -> bool:
    """Whether results (seed -> ``{"hit_rate": .., "hit_by_answer": {colour: ..}}``) meet
    :data:`DEV_CRITERION`: ``dev`` must hold every seed of :data:`DEV_SEEDS`, ``extra`` every seed of
    :data:`DEV_SEEDS_EXTRA`."""
    if set(dev) != set(DEV_SEEDS) or set(extra) != set(DEV_SEEDS_EXTRA):
        return False
    c = DEV_CRITERION
    hits = [r["hit_rate"] for r in dev.values()]
    worst = [min(r["hit_by_answer"].values()) for r in dev.values()]
    return (sum(hits) / len(hits) >= c["mean_hit"] and min(hits) >= c["min_seed_hit"]
            and min(worst) >= c["min_colour_hit"]
            and all(min(r["hit_by_answer"].values()) >= c["min_colour_hit"] for r in extra.values()))


def data_seeds(seed: int) -> tuple[int, int]:
    """Generator seeds of run ``seed``'s training and held-out images (distinct for every run seed)."""
    return 1_000_000 + 2 * seed, 1_000_001 + 2 * seed


def _shape(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], kind: int, **style: Any) -> None:
    if kind == 0:
        draw.rectangle(box, **style)
    elif kind == 1:
        draw.ellipse(box, **style)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], **style)


def make_image(rng: np.random.Generator, tile: int, kinds: list[str] | None = None) -> tuple[Image.Image, int, int]:
    """One needle image (``kinds``, if given, receives ``needle``/``grey``/``outline`` per tile).

    Returns:
        ``(image, answer, needle)``: the ``3*tile`` square picture, the index of the answer in
        :func:`answer_words` (colours, then :data:`NO_NEEDLE`), and the needle tile's row-major
        index (0..8; -1 for an image without a needle).
    """
    size = GRID * tile
    bg = int(rng.integers(215, 250))
    img = Image.new("RGB", (size, size), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    names = list(COLOURS)
    answer = int(rng.integers(len(names)))
    needle = int(rng.integers(GRID * GRID))
    if rng.random() < NO_NEEDLE_FRACTION:
        answer, needle = len(names), -1
    for t in range(GRID * GRID):
        r, c = divmod(t, GRID)
        side = int(rng.integers(tile * 4 // 10, tile * 7 // 10))
        x0 = c * tile + int(rng.integers(2, tile - side - 1))
        y0 = r * tile + int(rng.integers(2, tile - side - 1))
        box = (x0, y0, x0 + side, y0 + side)
        kind = int(rng.integers(3))
        what = "needle" if t == needle else ("grey" if rng.random() < 0.5 else "outline")
        if kinds is not None:
            kinds.append(what)
        if what == "needle":
            _shape(draw, box, kind, fill=COLOURS[names[answer]])
        elif what == "grey":
            g = int(rng.integers(90, 170))
            _shape(draw, box, kind, fill=(g, g, g))
        else:
            # an outline's colour is drawn independently of the answer: it carries no information
            colour = COLOURS[names[int(rng.integers(len(names)))]]
            _shape(draw, box, kind, outline=colour, width=max(1, tile // 28))
    return img, answer, needle


def tile_kinds(n: int, seed: int, tile: int = 28) -> list[list[str]]:
    """What each tile of the images of ``make_data(n, seed)`` holds (``needle``/``grey``/``outline``).

    Replays the generator of :func:`make_data`, so the pictures are not tiled again.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kinds: list[str] = []
        make_image(rng, tile, kinds)
        out.append(kinds)
    return out


def palette_chroma(
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406), std: tuple[float, float, float] = (0.229, 0.224, 0.225)
) -> dict[str, dict[str, Any]]:
    """Each answer colour's chroma as the encoder receives it, and its cosine to the palette's mean chroma.

    Chroma: the colour normalised with the processor's ``mean``/``std`` (ImageNet's by default,
    as :func:`processor` uses) minus its mean over the three channels, so grey has none. A tile
    score that is linear in colour and learned from needles of every colour points along the
    palette's mean chroma; a colour whose cosine to it is negative is then ranked *below* grey.
    """
    m, s = np.asarray(mean), np.asarray(std)
    chroma = {}
    for name, rgb in COLOURS.items():
        x = (np.asarray(rgb) / 255.0 - m) / s
        chroma[name] = x - x.mean()
    centre = np.mean(list(chroma.values()), axis=0)
    return {
        name: {
            "chroma": [round(float(v), 3) for v in c],
            "cos_to_palette_mean": float(c @ centre / (np.linalg.norm(c) * np.linalg.norm(centre))),
        }
        for name, c in chroma.items()
    }


def hit_rate_by_answer(weights: torch.Tensor, data: "NeedleData") -> dict[str, float]:
    """Hit rate per answer colour over the images whose needle has that colour (NaN where there is none)."""
    hit = weights.argmax(-1) == data.needle
    names = answer_words()
    return {
        names[a]: float(hit[(data.answer == a) & (data.needle >= 0)].float().mean())
        for a in range(len(COLOURS))
    }


@dataclass
class NeedleData:
    """Images tiled by the real processor.

    Attributes:
        pixel_values: ``[images, views, 3, tile, tile]`` (9 tiles then the thumbnail).
        answer: ``[images]`` index of the answer in :func:`answer_words`.
        needle: ``[images]`` row-major index of the needle tile (-1: no needle).
        images: the first few pictures, kept for the weight-map figures.
    """

    pixel_values: torch.Tensor
    answer: torch.Tensor
    needle: torch.Tensor
    images: list[Image.Image] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.answer.shape[0])


def processor(tile: int) -> Any:
    """The real ``InternVLProcessor`` (GotOcr2 tiling) at ``tile`` px, allowing the 3x3 grid."""
    from gswa_plugin.testing.tiny import tiny_internvl_processor

    return tiny_internvl_processor(image_size=tile, max_patches=GRID * GRID)


def make_data(n: int, seed: int, tile: int = 28, keep_images: int = 8, proc: Any = None) -> NeedleData:
    """``n`` needle images from generator ``seed``, tiled by the real processor."""
    rng = np.random.default_rng(seed)
    proc = proc or processor(tile)
    pix, ans, ndl, kept = [], [], [], []
    for i in range(n):
        img, a, k = make_image(rng, tile)
        out = proc.image_processor(images=[img], return_tensors="pt")
        pv = out["pixel_values"]
        if pv.shape[0] != GRID * GRID + 1:
            raise RuntimeError(f"the processor cut a {img.size} image into {pv.shape[0]} views, expected 10")
        pix.append(pv)
        ans.append(a)
        ndl.append(k)
        if i < keep_images:
            kept.append(img)
    return NeedleData(torch.stack(pix), torch.tensor(ans), torch.tensor(ndl), kept)


@dataclass
class RunConfig:
    """One training run of the needle benchmark.

    Attributes:
        mode: ``none`` (no GSWA) or a GSWA application mode (``embed``, ``value``, ``attn_bias``).
        variant: GSWA variant (ignored for ``none``).
        seed: host initialisation, GSWA's own generator and the batch order.
        frozen_encoder: freeze the vision tower (it cannot silence distractor tiles by itself).
        steps, batch_size, lr, gswa_lr: training schedule (AdamW).
        vision_lr: learning rate of the vision tower when it is trained (``None``: ``lr``; at
            ``lr = 1e-3`` the tiny host often failed to learn the task at all in 300 steps).
        gswa_warmup: steps during which GSWA's parameters stay at their identity start (all weights
            1) while the host learns the task, as when GSWA is added to a pretrained host.
        eval_every: held-out evaluation interval (for the hit-rate curve); 0: only at the end.
        tile: tile size in pixels (28 px: 4 patches, 1 language-model token per view; 56 px: 4 tokens).
        text_layers: language-model depth.
        entropy_weight: adds ``entropy_weight`` times the mean entropy of each image's tile
            distribution ``w / T`` to the training loss (positive: sharper weights; negative: flatter).
            An unsupervised term: it never sees where the needle is.
        logit_noise: standard deviation of Gaussian noise added to GSWA's attention logits while
            training (exploration, as in noisy mixture-of-experts gating); 0: none.
        score_input: GSWA's ``score_input`` (``summary`` or ``squared_deviation``).
        score_features: ``linear`` (GSWA as configured) or ``quadratic`` (the scorer's input is
            ``[LN(s), LN(s)**2]``: a score that can rank opposite colours both above grey).
        tile_dropout: weight-driven tile dropout while training: a tile of weight ``w < 1`` is
            dropped (its weight set to 0 in the forward pass) with probability
            ``tile_dropout * (1 - w)``; the backward pass sees the undropped weight (straight-through),
            so a low weight on a tile the answer needs costs answer loss and gets a gradient; 0: none.
            ``tile_dropout_relative``: the probability is ``tile_dropout * (1 - w / max w)`` over the
            image's tiles instead (only the image's top tile is always kept).
        query_bias: train the scoring layer's query bias (``False``: it stays at 0, so the query
            can only come from the thumbnail's summary, not from a constant learned direction).
        deviation_scorer: replace GSWA's scorer by :class:`_DeviationScorer` (dev candidate);
            ``deviation_metric: False`` keeps its per-channel metric at 1 (only the scale learns).
        centre_summaries: subtract each image's mean tile summary from its summaries (thumbnail
            included) before GSWA's input norm: a tile is then scored by how it differs from the others.
        temperature_start, temperature_steps: a temperature schedule while training: GSWA's logits
            are divided by a factor that falls linearly from ``temperature_start`` to 1 over the first
            ``temperature_steps`` steps (high: flat weights, so early steps cannot saturate the
            softmax); evaluation always sees the factor 1. ``temperature_steps = 0``: no schedule.
        readout_weight: an auxiliary answer readout: a linear layer reads the GSWA-weighted mean of
            the tile summaries (summaries detached: only GSWA and the readout learn from it) and its
            cross-entropy against the answer, times ``readout_weight``, joins the loss. It never sees
            where the needle is; it makes a low weight on the answer's tile cost loss for every colour
            from the first step (in ``value`` mode the language model can answer from a low-weight
            tile, so the answer loss alone does not). 0: none.
        importance_weight, importance_temperature: adds ``importance_weight`` times
            :func:`gswa_plugin.weighting.importance_loss` (GSWA's tile distribution against the
            standardised ``-dL/dw`` of the answer loss, at ``importance_temperature``); its gradient
            reaches GSWA's parameters only. 0: none.
        train_min_weight: a floor on the weights while training only: the language model sees
            ``w + train_min_weight * (1 - w)`` (GSWA's ``min_weight`` formula; the mean stays 1), so a
            tile of low weight is still read and the answer loss keeps a gradient for it; evaluation
            sees GSWA's own weights. Applied after the importance term reads ``w``. 0: none.
        linear_score_grad: an unsaturated gradient path to GSWA's scorer while training (see
            :func:`linear_score_path`): the forward pass is unchanged, and the scorer's logit of each
            tile also receives ``linear_score_grad`` times the answer loss's ``dL/dw`` of that tile
            (centred per image), whatever its weight; through the softmax alone that gradient is
            scaled by the tile's weight, so it vanishes for a tile whose weight collapsed. 0: none.
        gswa_heads: GSWA's ``num_heads`` (the tile weights are the mean of the heads' distributions).
        gswa_reset_at: after this training step, GSWA's scorer goes back to its identity start (query
            projection zeroed: every weight 1) and AdamW forgets GSWA's moments, while the host keeps
            what it learned: GSWA then learns again from a host that already answers (0: never).
        low_weight_penalty, low_weight_margin: adds ``low_weight_penalty`` times the mean over images,
            heads and tiles of ``relu(-low_weight_margin - log(T a_i))**2`` (``a``: a scoring head's
            attention over the image's ``T`` tiles) to the training loss: a tile whose weight falls
            below ``exp(-low_weight_margin)`` is pulled back up, the others are left alone, so a
            weight cannot collapse to 0 and stay there (an unsupervised term; 0: none).
        gswa_weight_decay: AdamW's decoupled weight decay on GSWA's parameters (0: none, as before).
            It pulls the scorer's query projection, hence every logit, back towards 0 (uniform weights)
            unless the answer loss keeps it there, so a weight that collapsed early without the loss
            asking for it drifts back (``gswa_weight_decay`` of the transformers trainer).
        gswa_lr_schedule: ``constant`` or ``linear`` (GSWA's learning rate, and with it AdamW's decoupled
            weight decay, falls linearly to 0 at the last step; the host's stays constant).
        gswa_decay_matrices_only: apply ``gswa_weight_decay`` to GSWA's 2-D weights only (projections),
            not to its LayerNorm gains and biases (the usual exclusion).
        standardise_summaries: standardise each channel of the summaries over the image's views
            (thumbnail and tiles: ``(s - mean) / std``) before GSWA's input norm, so every channel's
            deviation is measured against its own spread in that image (dev candidate).
        gswa_eps: AdamW's ``eps`` for GSWA's parameters (the host keeps 1e-8). Adam divides each
            step by the gradient's running RMS, so a gradient of any size moves GSWA by about
            ``gswa_lr`` per step, even while the host does not yet answer from the image (gradients
            near 0); a larger ``eps`` makes such steps proportionally smaller.
        distinct_weight, distinct_temperature: adds ``distinct_weight`` times
            :func:`gswa_plugin.weighting.distinctiveness_loss` (GSWA's tile distribution against
            ``softmax(z / distinct_temperature)`` of each tile's standardised, parameter-free
            distinctiveness in the summaries GSWA reads); its gradient reaches GSWA's parameters
            only. An unsupervised reason to keep every distinct tile high, whatever the answer loss
            asks at that moment (fifth attempt). 0: none.
        distinct_anneal_start: from this step on, ``distinct_weight`` falls linearly to 0 at the last
            step (0: constant weight).
    """

    mode: str = "value"
    variant: str = "self_attn"
    seed: int = 0
    frozen_encoder: bool = False
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    gswa_lr: float = 1e-2
    eval_every: int = 50
    tile: int = 28
    text_layers: int = 2
    gswa_hidden: int = 64
    summary: str = "cls"
    min_weight: float = 0.0
    temperature: float = 1.0
    gswa_warmup: int = 0
    vision_lr: float | None = 2e-4
    global_weight: float = 1.0
    entropy_weight: float = 0.0
    logit_noise: float = 0.0
    score_features: str = "linear"
    centre_summaries: bool = False
    tile_dropout: float = 0.0
    tile_dropout_relative: bool = False
    query_bias: bool = True
    score_input: str = "summary"
    temperature_start: float = 1.0
    temperature_steps: int = 0
    readout_weight: float = 0.0
    deviation_scorer: bool = False
    deviation_metric: bool = True
    importance_weight: float = 0.0
    importance_temperature: float = 1.0
    train_min_weight: float = 0.0
    linear_score_grad: float = 0.0
    gswa_heads: int = 4
    gswa_eps: float = 1e-8
    gswa_weight_decay: float = 0.0
    gswa_decay_matrices_only: bool = False
    gswa_lr_schedule: str = "constant"
    low_weight_penalty: float = 0.0
    gswa_reset_at: int = 0
    low_weight_margin: float = 2.0
    standardise_summaries: bool = False
    distinct_weight: float = 0.0
    distinct_temperature: float = 1.0
    distinct_anneal_start: int = 0


def reset_to_identity(model: Any, opt: torch.optim.Optimizer, gswa_params: list[torch.Tensor]) -> None:
    """Zero the scoring layer's query projection (every weight back to exactly 1) and drop AdamW's
    state for GSWA's parameters, so their next steps start from fresh moments."""
    with torch.no_grad():
        model.gswa.scorer.query.weight.zero_()
        model.gswa.scorer.query.bias.zero_()
    for p in gswa_params:
        opt.state.pop(p, None)
    if not model.gswa.is_identity():
        raise RuntimeError("GSWA did not return to identity")


def low_weight_term(logits: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean(relu(-margin - log(T a))**2)`` over scoring logits ``[images, heads, T]`` or ``[images, T]``
    (every tile valid, as in the needle task): zero unless a tile's weight ``T a`` is below ``exp(-margin)``."""
    logw = torch.log_softmax(logits.float(), -1) + math.log(logits.shape[-1])
    return torch.relu(-margin - logw).pow(2).mean()


def temperature_factor(cfg: RunConfig, step: int) -> float:
    """What GSWA's training-time logits are divided by at ``step`` (0-based) of the schedule."""
    if not cfg.temperature_steps:
        return 1.0
    frac = min(1.0, step / cfg.temperature_steps)
    return cfg.temperature_start + frac * (1.0 - cfg.temperature_start)


class _DeviationScorer(torch.nn.Module):
    """Dev candidate: ``logit_i = a * sum_c m_c (LN(s_i) - mean_j LN(s_j))_c**2``, a colour-agnostic score.

    How unlike its image's other tiles a tile is, under a learned non-negative per-channel metric
    ``m = softplus(b) / softplus(0)`` (1 at the start) and a learned scale ``a`` that starts at 0:
    every weight is exactly 1 at initialisation. There is no query direction to lock onto one colour.
    """

    def __init__(self, norm: torch.nn.Module, dim: int):
        super().__init__()
        self.in_norm = norm
        self.metric = torch.nn.Parameter(torch.zeros(dim))
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor, tile_mask: torch.Tensor) -> torch.Tensor:
        h = self.in_norm(tokens)[:, 1:]
        m = tile_mask[..., None].to(h.dtype)
        mean = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
        metric = torch.nn.functional.softplus(self.metric) / float(torch.nn.functional.softplus(torch.zeros(())))
        return self.scale * (((h - mean) ** 2) * metric).sum(-1)

    def is_identity(self) -> bool:
        return not bool(self.scale)


class _StandardisedInput(torch.nn.Module):
    """Per channel, ``(s - mean) / std`` over each image's views (padded ``[images, 1 + T, dim]``,
    every view valid in the needle task), then the scorer's input norm (dev candidate)."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-5)
        return self.norm(x)


class _QuadraticInput(torch.nn.Module):
    """``[LN(s), LN(s)**2]``: the scorer's input norm followed by squared features (dev candidate)."""

    def __init__(self, norm: torch.nn.Module, centre: bool):
        super().__init__()
        self.norm, self.centre, self.quadratic = norm, centre, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.centre:
            x = x - x[:, 1:].mean(1, keepdim=True)
        h = self.norm(x)
        return torch.cat([h, h * h], -1) if self.quadratic else h


def linear_score_path(w: torch.Tensor, logits: torch.Tensor, layout: Any, scale: float) -> torch.Tensor:
    """``w`` (flat per-view weights ``[views]``) plus a term that is zero in the forward pass and
    gives each tile's scorer logit (``logits [images, max_tiles]`` or ``[images, heads, max_tiles]``,
    padded as GSWA pads them) the
    gradient ``scale * (dL/dw_i - mean_j dL/dw_j)`` over the image's tiles (the thumbnail gets none).

    A straight-through path: through the softmax, ``dL/dlogit_i = w_i (dL/dw_i - sum_j a_j dL/dw_j)``
    vanishes with ``w_i``; this path does not, so a tile whose weight collapsed early still moves
    when raising it would lower the loss. Unsupervised: only the answer loss's gradient.
    """
    from gswa_plugin.layout import pad_summaries

    padded = pad_summaries(w[:, None], layout)
    if logits.dim() == 2:
        logits = logits[:, None]  # [images, heads, tiles]: every head's logits get the same gradient
    mask = padded.tile_mask[:, None]
    m = mask.to(logits.dtype)
    lg = logits.float().masked_fill(~mask, 0.0)
    centred = lg - (lg * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1.0)
    delta = ((centred - centred.detach()) * m).sum(1) * scale  # zero forward; d/dlogit = scale (centred)
    per_slot = torch.cat([torch.zeros_like(delta[:, :1]), delta], dim=1)  # slot 0: the thumbnail
    return w + per_slot[padded.image_index, padded.slot].to(w.dtype)


def _relative_weights(w: torch.Tensor, layout: Any) -> torch.Tensor:
    """Each view's weight over the largest tile weight of its image (thumbnails: 1)."""
    from gswa_plugin.layout import pad_summaries

    padded = pad_summaries(w[:, None], layout)
    tiles = padded.tokens[:, 1:, 0].masked_fill(~padded.tile_mask, 0.0)
    top = tiles.amax(-1).clamp_min(1e-12)[padded.image_index]
    return torch.where(padded.slot == 0, torch.ones_like(w), w / top)


def _modify_scorer(model: Any, cfg: "RunConfig") -> None:
    scorer = model.gswa.scorer
    if cfg.score_features not in ("linear", "quadratic"):
        raise ValueError(f"score_features must be 'linear' or 'quadratic', got {cfg.score_features!r}")
    if cfg.deviation_scorer:
        model.gswa.scorer = _DeviationScorer(scorer.in_norm, scorer.in_norm.normalized_shape[0])
        model.gswa.scorer.metric.requires_grad_(cfg.deviation_metric)
        return
    if cfg.standardise_summaries:
        scorer.in_norm = _StandardisedInput(scorer.in_norm)
    if cfg.score_features == "linear" and not cfg.centre_summaries:
        return
    inp = _QuadraticInput(scorer.in_norm, cfg.centre_summaries)
    if cfg.score_features == "quadratic":
        gen = torch.Generator().manual_seed(cfg.seed + 7919)
        up = torch.nn.Linear(2 * scorer.up.in_features, scorer.up.out_features)
        with torch.no_grad():
            bound = 1 / (2 * scorer.up.in_features) ** 0.5
            up.weight.uniform_(-bound, bound, generator=gen)
            up.bias.uniform_(-bound, bound, generator=gen)
        scorer.up = up
    else:
        inp.quadratic = False
    scorer.in_norm = inp


def build_model(cfg: RunConfig) -> tuple[Any, Any]:
    """The tiny native InternVL of a run, with GSWA enabled unless ``mode == 'none'``.

    Returns:
        ``(model, handle)``; ``handle`` is ``None`` for ``mode == 'none'``.
    """
    from gswa_plugin import api
    from gswa_plugin.testing.tiny import tiny_internvl

    model = tiny_internvl(seed=cfg.seed, image_size=cfg.tile, text_layers=cfg.text_layers)
    handle = None
    if cfg.mode != "none":
        handle = api.enable(
            model,
            {
                "variant": cfg.variant,
                "mode": cfg.mode,
                "hidden_size": cfg.gswa_hidden,
                "num_heads": cfg.gswa_heads,
                "seed": cfg.seed,
                "summary": cfg.summary,
                "min_weight": cfg.min_weight,
                "temperature": cfg.temperature,
                "global_weight": cfg.global_weight,
                "score_input": cfg.score_input,
            },
        )
        _modify_scorer(model, cfg)
        if not cfg.query_bias and hasattr(model.gswa.scorer, "query"):
            model.gswa.scorer.query.bias.requires_grad_(False)
    if cfg.frozen_encoder:
        model.model.vision_tower.requires_grad_(False)
    return model, handle


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from gswa_plugin.testing.tiny import tiny_tokenizer

    return tiny_tokenizer()


def prompt_ids(model: Any, tokens_per_view: int, views: int = GRID * GRID + 1) -> torch.Tensor:
    """``<img> <IMG_CONTEXT>*n </img> what colour is the shape ?`` as ids of the tiny tokenizer."""
    tok = _tokenizer()
    text = "<img>" + "<IMG_CONTEXT>" * (tokens_per_view * views) + "</img> " + QUESTION
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if tok.unk_token_id in ids:
        raise RuntimeError("the needle prompt has words outside the tiny vocabulary")
    return torch.tensor(ids)


def answer_words() -> list[str]:
    """The answers: the colour words, then :data:`NO_NEEDLE`."""
    return [*COLOURS, NO_NEEDLE]


def answer_ids() -> torch.Tensor:
    tok = _tokenizer()
    return torch.tensor([tok.convert_tokens_to_ids(c) for c in answer_words()])


def _forward(model: Any, ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Last-position logits for a batch ``pixel_values [B, views, 3, t, t]``."""
    b = pixel_values.shape[0]
    out = model(
        input_ids=ids[None].expand(b, -1),
        pixel_values=pixel_values.flatten(0, 1),
        logits_to_keep=1,
    )
    return out.logits[:, -1]


@torch.no_grad()
def evaluate(model: Any, handle: Any, data: NeedleData, ids: torch.Tensor, chunk: int = 128) -> dict[str, Any]:
    """Held-out accuracy, hit rate, mean needle weight and the tile weights ``[images, 9]``."""
    from gswa_plugin import api

    from gswa_plugin.weighting import tile_distinctiveness

    was_training = model.training
    model.eval()
    colour_ids = answer_ids()
    correct, weights, distinct = [], [], []
    seen: dict[str, Any] = {}
    hook = None
    if handle is not None:
        hook = model.gswa.register_forward_pre_hook(lambda m, args: seen.__setitem__("s", args[:2]))
    for s in range(0, len(data), chunk):
        logits = _forward(model, ids, data.pixel_values[s : s + chunk])
        correct.append(logits[:, colour_ids].argmax(-1) == data.answer[s : s + chunk])
        if handle is not None:
            weights.append(torch.stack(api.last_weights(model)).float())
            distinct.append(tile_distinctiveness(*seen.pop("s")).view(weights[-1].shape[0], -1)[:, :-1])  # thumbnail last
    if hook is not None:
        hook.remove()
    model.train(was_training)
    res: dict[str, Any] = {"accuracy": float(torch.cat(correct).float().mean())}
    if weights:
        w = torch.cat(weights)
        has = data.needle >= 0  # hit rate and needle weight over the images that have a needle
        res["hit_rate"] = float((w[has].argmax(-1) == data.needle[has]).float().mean())
        res["needle_weight"] = float(w[has].gather(1, data.needle[has][:, None]).mean())
        res["weights"] = w
        res["hit_by_answer"] = hit_rate_by_answer(w, data)
        # the parameter-free prior (the distinctiveness term's target): its argmax is the most distinct tile
        d = torch.cat(distinct)
        res["prior_hit_rate"] = float((d[has].argmax(-1) == data.needle[has]).float().mean())
        res["prior_hit_by_answer"] = hit_rate_by_answer(d, data)
    else:
        res.update(hit_rate=None, needle_weight=None, weights=None)
    return res


def make_optimizer(model: Any, cfg: RunConfig) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """AdamW over a run's trainable parameters (shared by the needle tasks): the language model and
    projector at ``lr``, the vision tower at ``vision_lr`` (``None``: ``lr``), GSWA at ``gswa_lr``
    with ``gswa_eps`` and ``gswa_weight_decay`` (on its 2-D weights only with
    ``gswa_decay_matrices_only``). GSWA's groups are marked ``"gswa": True`` (for
    ``gswa_lr_schedule``). Returns the optimizer and GSWA's trainable parameters."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gswa_named = [(n, p) for n, p in trainable if n.startswith("gswa.")]
    host = [(n, p) for n, p in trainable if not n.startswith("gswa.")]
    vision = [p for n, p in host if "vision_tower" in n]
    groups = [{"params": [p for n, p in host if "vision_tower" not in n], "lr": cfg.lr}]
    if vision:
        groups.append({"params": vision, "lr": cfg.lr if cfg.vision_lr is None else cfg.vision_lr})
    gswa = {"lr": cfg.gswa_lr, "eps": cfg.gswa_eps, "gswa": True}
    if cfg.gswa_decay_matrices_only:  # decay the 2-D weights only, not norms and biases
        for decayed in (True, False):
            ps = [p for n, p in gswa_named if (p.dim() >= 2) == decayed]
            if ps:
                groups.append({"params": ps, **gswa, "weight_decay": cfg.gswa_weight_decay if decayed else 0.0})
    elif gswa_named:
        groups.append({"params": [p for n, p in gswa_named], **gswa, "weight_decay": cfg.gswa_weight_decay})
    return torch.optim.AdamW(groups), [p for n, p in gswa_named]


class ImportanceTerm:
    """Wires ``cfg.importance_weight`` and ``cfg.distinct_weight`` into a training loop (shared by
    the needle tasks).

    A forward hook on ``model.gswa`` keeps the flat view weights ``w`` of each training forward,
    the summaries GSWA read and their layout, and a tensor hook keeps ``dL/dw``; :meth:`backward`
    runs the task loss's backward (keeping the graph), then adds ``importance_weight`` times
    :func:`gswa_plugin.weighting.importance_loss` and :meth:`distinct_weight_at` times
    :func:`gswa_plugin.weighting.distinctiveness_loss`, their gradient sent to ``gswa_params``
    only. After :meth:`backward`, :attr:`last` holds ``(w, dL/dw, layout)`` of that step (detached),
    for diagnostics. With both weights 0 it only records them (the loss's backward as usual).
    Remove :attr:`hook` when done.
    """

    def __init__(self, model: Any, cfg: RunConfig, gswa_params: list[torch.Tensor]):
        self.weight, self.temperature, self.params = cfg.importance_weight, cfg.importance_temperature, gswa_params
        self.cfg = cfg
        self.step = 0  # the training step (0-based), for the distinctiveness weight's schedule
        self._seen: dict[str, Any] = {}
        self.last: tuple[torch.Tensor, torch.Tensor, Any] | None = None

        def _keep(module: Any, args: Any, w: torch.Tensor) -> None:
            if module.training and w.requires_grad:
                self._seen["w"] = (w, args[1], args[0].detach())
                w.register_hook(lambda g: self._seen.__setitem__("grad", g.detach()))

        self.hook = model.gswa.register_forward_hook(_keep)

    def discard(self) -> None:
        """Forget what the hook kept of a step whose loss is backpropagated without the term."""
        self._seen.clear()

    def distinct_weight_at(self, step: int) -> float:
        """``distinct_weight`` at training step ``step`` (0-based): constant, or from
        ``distinct_anneal_start`` on falling linearly to 0 at the last step."""
        c = self.cfg
        if not c.distinct_anneal_start or step < c.distinct_anneal_start:
            return c.distinct_weight
        return c.distinct_weight * max(0.0, 1.0 - (step - c.distinct_anneal_start) / max(1, c.steps - c.distinct_anneal_start))

    def backward(self, loss: torch.Tensor) -> None:
        from gswa_plugin.weighting import distinctiveness_loss, importance_loss

        kept = self._seen.pop("w", None)
        distinct = self.distinct_weight_at(self.step)
        loss.backward(retain_graph=bool(self.weight or distinct) and kept is not None)
        grad = self._seen.pop("grad", None)
        if kept is None or grad is None:
            self.last = None
            return
        w, layout, summaries = kept
        self.last = (w.detach(), grad, layout)
        aux = None
        if self.weight:
            aux = self.weight * importance_loss(w, grad, layout, self.temperature)
        if distinct:
            d = distinct * distinctiveness_loss(w, summaries, layout, self.cfg.distinct_temperature)
            aux = d if aux is None else aux + d
        if aux is not None:
            aux.backward(inputs=self.params)


def train(
    cfg: RunConfig,
    train_data: NeedleData,
    eval_data: NeedleData,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    keep_model: bool = False,
) -> dict[str, Any]:
    """Train one run and evaluate it.

    Returns:
        A dict with the config, final ``accuracy``, ``hit_rate``, ``needle_weight``,
        ``wall_s``, ``history`` (``[step, accuracy, hit_rate]`` at each evaluation) and the
        held-out tile ``weights`` ``[images, 9]`` (a tensor, or ``None`` without GSWA); with
        ``keep_model`` also the trained ``model`` and its GSWA ``handle``.
    """
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    model, handle = build_model(cfg)
    ids = None
    opt, gswa_params = make_optimizer(model, cfg)
    if cfg.gswa_lr_schedule not in ("constant", "linear"):
        raise ValueError(f"gswa_lr_schedule must be 'constant' or 'linear', got {cfg.gswa_lr_schedule!r}")
    order = torch.Generator().manual_seed(cfg.seed)
    target_ids = answer_ids()
    tpv = (cfg.tile // 14) ** 2 // 4
    ids = prompt_ids(model, tpv)
    history: list[list[float | None]] = []
    by_answer: list[list[Any]] = []
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    if handle is not None and cfg.entropy_weight:
        hooks.append(model.gswa.register_forward_hook(lambda m, a, out: captured.__setitem__("w", out)))
    if handle is not None and cfg.low_weight_penalty:

        def _keep_scores(module: Any, args: Any, out: torch.Tensor) -> None:
            if module.training:
                captured["scores"] = out

        hooks.append(model.gswa.scorer.register_forward_hook(_keep_scores))
    if handle is not None and cfg.logit_noise:
        noise_gen = torch.Generator().manual_seed(cfg.seed + 104729)

        def _noisy(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor | None:
            if not module.training:
                return None
            return out + cfg.logit_noise * torch.randn(out.shape, generator=noise_gen, dtype=out.dtype)

        hooks.append(model.gswa.scorer.register_forward_hook(_noisy))
    sched = {"step": 0}  # the training step, for the temperature schedule
    if handle is not None and cfg.temperature_steps and cfg.temperature_start != 1.0:

        def _anneal(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor | None:
            if not module.training:
                return None
            return out / temperature_factor(cfg, sched["step"])

        hooks.append(model.gswa.scorer.register_forward_hook(_anneal))
    readout = None
    if handle is not None and cfg.readout_weight:
        dim = model.gswa.summary_dim
        gen = torch.Generator().manual_seed(cfg.seed + 32452843)
        readout = torch.nn.Sequential(torch.nn.LayerNorm(dim, elementwise_affine=False), torch.nn.Linear(dim, len(target_ids)))
        with torch.no_grad():
            bound = 1 / dim**0.5
            readout[1].weight.uniform_(-bound, bound, generator=gen)
            readout[1].bias.zero_()
        opt.add_param_group({"params": list(readout.parameters()), "lr": cfg.gswa_lr, "weight_decay": 0.0})

        def _pool(module: Any, args: Any, w: torch.Tensor) -> None:
            if module.training:
                captured["pool"] = (args[0].detach(), w)

        hooks.append(model.gswa.register_forward_hook(_pool))
    importance = (ImportanceTerm(model, cfg, gswa_params)
                  if handle is not None and (cfg.importance_weight or cfg.distinct_weight) else None)
    if importance is not None:
        hooks.append(importance.hook)
    if handle is not None and cfg.train_min_weight:

        def _floor(module: Any, args: Any, w: torch.Tensor) -> torch.Tensor | None:
            return w + cfg.train_min_weight * (1.0 - w) if module.training else None

        hooks.append(model.gswa.register_forward_hook(_floor))
    if handle is not None and cfg.linear_score_grad:

        def _keep_logits(module: Any, args: Any, out: torch.Tensor) -> None:
            if module.training:
                captured["logits"] = out

        def _linear_path(module: Any, args: Any, w: torch.Tensor) -> torch.Tensor | None:
            if not module.training or "logits" not in captured:
                return None
            return linear_score_path(w, captured.pop("logits"), args[1], cfg.linear_score_grad)

        hooks.append(model.gswa.scorer.register_forward_hook(_keep_logits))
        hooks.append(model.gswa.register_forward_hook(_linear_path))
    if handle is not None and cfg.tile_dropout:
        drop_gen = torch.Generator().manual_seed(cfg.seed + 15485863)

        def _drop(module: Any, args: Any, w: torch.Tensor) -> torch.Tensor | None:
            if not module.training:
                return None
            p_drop = cfg.tile_dropout * (1.0 - _relative_weights(w.detach(), args[1]) if cfg.tile_dropout_relative
                                         else 1.0 - w.detach().clamp(max=1.0))
            keep = (torch.rand(w.shape, generator=drop_gen) >= p_drop).to(w.dtype)
            return w + (w * keep - w).detach()  # forward: dropped tiles at 0; backward: straight through

        hooks.append(model.gswa.register_forward_hook(_drop))
    model.train()
    n = len(train_data)
    perm = torch.randperm(n, generator=order)
    pos = 0
    for step in range(1, cfg.steps + 1):
        sched["step"] = step - 1
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=order), 0
        idx = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        logits = _forward(model, ids, train_data.pixel_values[idx])
        # cross-entropy over the answer words only: the task is which answer, not that one comes next
        loss = torch.nn.functional.cross_entropy(logits[:, target_ids], train_data.answer[idx])
        if "w" in captured:
            views = train_data.pixel_values.shape[1]
            a = captured.pop("w").view(-1, views)[:, : views - 1] / (views - 1)  # thumbnail last
            loss = loss + cfg.entropy_weight * -(a * a.clamp_min(1e-12).log()).sum(-1).mean()
        if "scores" in captured:
            loss = loss + cfg.low_weight_penalty * low_weight_term(captured.pop("scores"), cfg.low_weight_margin)
        if "pool" in captured:
            summ, w = captured.pop("pool")
            views = train_data.pixel_values.shape[1]
            summ, w = summ.view(-1, views, summ.shape[-1])[:, : views - 1], w.view(-1, views)[:, : views - 1]
            pooled = (w[..., None] * readout[0](summ.float())).mean(1)  # thumbnail last; tiles only
            loss = loss + cfg.readout_weight * torch.nn.functional.cross_entropy(readout[1](pooled), train_data.answer[idx])
        opt.zero_grad(set_to_none=True)
        if importance is not None:
            importance.step = step - 1
            importance.backward(loss)
        else:
            loss.backward()
        if step <= cfg.gswa_warmup:
            for p in gswa_params:
                p.grad = None  # AdamW skips parameters without a gradient: GSWA stays at identity
        opt.step()
        if cfg.gswa_lr_schedule == "linear":  # GSWA's groups: lr (and so AdamW's decoupled decay) falls to 0
            for g in opt.param_groups:
                if g.get("gswa"):
                    g["lr"] = cfg.gswa_lr * (1.0 - step / cfg.steps)
        if cfg.gswa_reset_at and step == cfg.gswa_reset_at and handle is not None:
            reset_to_identity(model, opt, gswa_params)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            ev = evaluate(model, handle, eval_data, ids)
            history.append([step, ev["accuracy"], ev["hit_rate"]])
            if ev.get("hit_by_answer") is not None:
                by_answer.append([step, ev["hit_by_answer"]])
            if progress is not None:
                progress(step, {"loss": float(loss.detach()), **{k: v for k, v in ev.items() if k != "weights"}})
    for h in hooks:
        h.remove()
    final = evaluate(model, handle, eval_data, ids)
    if not history or history[-1][0] != cfg.steps:
        history.append([cfg.steps, final["accuracy"], final["hit_rate"]])
    kept = {"model": model, "handle": handle} if keep_model else {}
    return {
        **kept,
        "config": asdict(cfg),
        "accuracy": final["accuracy"],
        "hit_rate": final["hit_rate"],
        "needle_weight": final["needle_weight"],
        "wall_s": time.perf_counter() - start,
        "history": history,
        "weights": final["weights"],
        "hit_by_answer": final.get("hit_by_answer"),
        "prior_hit_rate": final.get("prior_hit_rate"),
        "prior_hit_by_answer": final.get("prior_hit_by_answer"),
        "hit_by_answer_history": by_answer,
    }


#: The recommended configuration at CI size (``tests/test_needle.py``): the run (a dev seed, its own
#: images from :func:`data_seeds`), the data sizes, and the hit rates it must reach (chance: 1/9). See
#: docs/needle.md.
BEST: dict[str, Any] = {
    "config": {"mode": "value", "variant": "self_attn", "frozen_encoder": False, "seed": 0, "steps": 300, "eval_every": 0},
    "train_images": 600,
    "eval_images": 128,
    "min_hit_rate": 0.6,
    "min_colour_hit_rate": 0.5,
}


#: ``RunConfig`` fields of the recommended configuration on top of ``value`` + ``self_attn``
#: (``run.py --recommended``), chosen on :data:`DEV_SEEDS` only: GSWA reads each view's mean token
#: instead of its CLS token (``summary: mean``), scores how unlike the other tiles each tile is
#: (``score_input: squared_deviation``) and learns at 3e-3 instead of 1e-2. ``summary: mean`` was
#: added in the third attempt (tag ``smean``: every colour found on all 32 dev seeds, docs/needle.md);
#: the distinctiveness term at weight 1, temperature 1 (``distinct_weight``) in the fifth (tag ``dist1``:
#: the first configuration to meet :data:`DEV_CRITERION`, committed before the third held-out draw ran).
RECOMMENDED: dict[str, Any] = {"score_input": "squared_deviation", "gswa_lr": 3e-3, "summary": "mean",
                               "distinct_weight": 1.0}
BEST["config"].update(RECOMMENDED)
