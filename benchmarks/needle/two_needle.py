"""The two-needle task: two informative tiles in one image, the question names one of them.

Each image is a 3x3 grid of tiles (as in :mod:`benchmarks.needle.task`): one tile holds a filled
saturated **square**, another a filled saturated **circle** of a different colour; the question
is ``what colour is the square ?`` or ``what colour is the circle ?`` (the tiny tokenizer has no
other shape word). The seven other tiles hold the distractors of ``task.py`` (grey filled shapes,
coloured outlines, any of square, circle, triangle). A fifth of the images hold neither needle
and the answer ``tile``; since the third round (``asked_absent``) a quarter of the others leave the
asked needle out and answer ``tile`` too. An image-only allocator gives the same weights to both questions, so at
most one of the two needles can hold the largest weight: its hit rate on the *asked* tile is at
most about 50%. A question-aware variant can find the asked tile.

Honest protocol: the settings below were tuned on the development seeds (:data:`DEV_SEEDS`,
101-124; 101-108 before the third round) only; each held-out draw is run once, with the
configuration fixed beforehand, and each seed resamples the training and evaluation images and the
host's initialisation. Every seed's row is reported. The first two held-out draws
(:data:`HELD_OUT_SEEDS_STOP24`, :data:`HELD_OUT_SEEDS_1825`) are used; the current one is
``numpy.random.default_rng(2618).integers(1_000_000, 10_000_000, 8)`` (third round; the fourth and
fifth rounds have their own draws, :data:`HELD_OUT_SEEDS_BUDGET` and :data:`HELD_OUT_SEEDS_5`).

    nice -n 19 python benchmarks/needle/two_needle.py --seeds dev --out benchmarks/needle/two_needle_dev.jsonl
    nice -n 19 python benchmarks/needle/two_needle.py --seeds heldout-6              # sixth round
    python benchmarks/needle/two_needle.py --seeds heldout-6 --report --keep 2        # the tables
    python benchmarks/needle/two_needle.py --round 5 --seeds heldout-5 --report --keep 2
    python benchmarks/needle/two_needle.py --round 4 --seeds heldout-budget --report --keep 2
    python benchmarks/needle/two_needle.py --round 3 --seeds heldout --report        # third round

The fourth round (``--round 4``) trains as the third and also evaluates every trained model under
token budgets of 2 and 3 visual tokens per image (:func:`evaluate_budgets`); each cell is trained
with every token or under the budget as :data:`CELL_BUDGET_TRAIN` says. The fifth (``--round 5``)
is the fourth on images with eight needle colours (:data:`SETTINGS_ROUND5`); the sixth
(``--round 6``, the default) the fifth with ``budget_mix: 0.5`` for the question-aware cells
(:data:`SETTINGS_ROUND6`).

With GSWA the training loop records where the answer loss's per-tile gradient points
(``grad_asked`` / ``grad_other``, see :data:`GRAD_STEPS`) and the hit rate per question.

``--set budget_mix=F`` (explored on development seeds only): a GSWA cell trained with every token
runs a fraction ``F`` of its steps under a budget (``budget_mix_keep`` tokens, default 2) that
train the host only (``budget_mix_gswa=true``: GSWA too); see :func:`train`.

Results go to ``two_needle.jsonl`` beside this file (one line per run; reruns skip done runs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks.needle import task  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "two_needle.jsonl"
#: The shapes a question can name (``task._shape`` kinds) and their words.
ASKED: dict[str, int] = {"square": 0, "circle": 1}
#: Development seeds (tuning only): 101-124 since the third round (the second round tuned on
#: 101-108). The first dev set, ``101, 102``, was too few: the settings chosen on it gave a held-out
#: hit rate of 0.42-0.89 on the asked tile.
DEV_SEEDS: tuple[int, ...] = tuple(range(101, 125))
#: USED (burnt): the held-out seeds of the first final table (the settings without the importance
#: term), drawn once by ``np.random.default_rng(18).integers(10_000, 100_000, 5)``; their results are
#: published (docs/question-aware.md). Never tune on them or reuse them as held-out.
HELD_OUT_SEEDS_STOP24: tuple[int, ...] = tuple(int(s) for s in np.random.default_rng(18).integers(10_000, 100_000, 5))
#: USED (burnt): the held-out seeds of the second round (issue 18, importance term, GSWA reading the
#: CLS summary), drawn by ``np.random.default_rng(1825).integers(100_000, 1_000_000, 5)``; results
#: published (docs/question-aware.md). Never tune on them or reuse them as held-out.
HELD_OUT_SEEDS_1825: tuple[int, ...] = tuple(int(s) for s in np.random.default_rng(1825).integers(100_000, 1_000_000, 5))
#: The held-out seeds of the third round (issue 18): the formula was written down and committed
#: before any run on these seeds and before the configuration was fixed, while tuning on
#: :data:`DEV_SEEDS`: ``np.random.default_rng(2618).integers(1_000_000, 10_000_000, 8)`` (above every
#: dev and used seed). Run once, every cell, every seed reported.
HELD_OUT_SEEDS: tuple[int, ...] = tuple(int(s) for s in np.random.default_rng(2618).integers(1_000_000, 10_000_000, 8))
#: The held-out seeds of the third round's frozen-encoder table (issue 18; the vision tower frozen as in
#: issue 15's benchmark, ``--set frozen_encoder=true``, otherwise :data:`SETTINGS`), drawn by
#: ``np.random.default_rng(2619).integers(1_000_000, 10_000_000, 8)``, written down and committed
#: before any run on them. Criterion, written down after 4 of the 12 development seeds had been read
#: for ``no GSWA`` / ``text_cross_attn`` only: the table is run (once, every cell) if, on development
#: seeds 101-112 with the frozen encoder, ``text_guided`` meets the hit-rate target (mean >= 0.90, no
#: seed below 0.80) and a question-aware cell's mean accuracy exceeds that of both ``no GSWA`` and
#: ``self_attn`` by more than the larger of their standard deviations between seeds. Result: not met,
#: so these seeds were NOT run (unused): ``text_cross_attn`` accuracy 0.995 against 0.929 without
#: GSWA and 0.827 for ``self_attn``, a gap of 0.066 below the spread (0.112 / 0.127).
HELD_OUT_SEEDS_FROZEN: tuple[int, ...] = tuple(
    int(s) for s in np.random.default_rng(2619).integers(1_000_000, 10_000_000, 8)
)
#: The held-out seeds of the fourth round (issue 18: accuracy at a token budget, where the weights decide
#: which tiles survive), drawn by ``np.random.default_rng(2620).integers(1_000_000, 10_000_000, 8)``,
#: written down and committed with the settings and the criterion below before any run on them.
#: Settings: :data:`SETTINGS_ROUND4` (the third round's training; budgets of 2 and 3 visual tokens per
#: image, one of them the thumbnail's), each cell trained as :data:`CELL_BUDGET_TRAIN` says (chosen on
#: development seeds 101-112 by the cell's own mean accuracy at 2 tokens: the question-aware cells
#: are trained with every token and only evaluated under the budget (dev 0.928 / 0.974, against
#: 0.707 / 0.777 trained under it); image-only ``self_attn`` and the host without GSWA are trained
#: under the 2-token budget (dev 0.698 and, with ``uniform``, 0.556, against 0.357 and 0.348
#: evaluated only). Criterion, on these seeds, budget 2: the accuracy target is met if the mean
#: accuracy of ``text_cross_attn`` (the question-aware cell with the higher dev mean; ``method:
#: gswa``) exceeds the mean of each baseline (``self_attn`` with ``method: gswa``; the host without
#: GSWA with ``uniform``, ``random`` and ``globalcom``) by more than the larger of the two cells'
#: standard deviations between seeds (ddof 1), and the hit-rate target still holds (``text_guided``,
#: every token: mean hit rate on the asked tile >= 0.90, no seed below 0.80). On dev seeds 101-112 it
#: holds (0.974, sd 0.050, against 0.698, sd 0.089, and 0.556 / 0.518 / 0.510; hit 0.98, lowest 0.85),
#: so the draw is run once, every cell, every seed reported.
HELD_OUT_SEEDS_BUDGET: tuple[int, ...] = tuple(
    int(s) for s in np.random.default_rng(2620).integers(1_000_000, 10_000_000, 8)
)
#: The held-out seeds of the fifth round (issue 18: the fourth round's protocol on images with eight
#: needle colours, :data:`SETTINGS_ROUND5`), drawn by
#: ``np.random.default_rng(2621).integers(1_000_000, 10_000_000, 8)``, written down and committed with
#: the criterion below before any run on them and before development seeds 113-124 were read.
#: Settings: :data:`SETTINGS_ROUND5`, each cell trained as :data:`CELL_BUDGET_TRAIN` says (the fourth
#: round's choice, unchanged). Since this round the question-aware text is pooled from a detached
#: embedding table (``gswa_plugin.adapters._text``). Criterion, at a budget of 2 visual tokens per
#: image: the declared cell is the question-aware cell with the higher mean accuracy at 2 tokens on
#: development seeds 101-124 under these settings; the target is met if (a) its mean accuracy
#: (``method: gswa``) exceeds the mean of each baseline (``self_attn`` with ``gswa``; the host without
#: GSWA with ``uniform``, ``random`` and ``globalcom``) by more than the larger of the two cells'
#: standard deviations between seeds (ddof 1), and (b) its hit rate on the asked tile with every
#: token has a mean of at least 0.90 and no seed below 0.80. The draw is run (once, every cell, every
#: seed reported) only if (a) and (b) hold on development seeds 101-124.
HELD_OUT_SEEDS_5: tuple[int, ...] = tuple(int(s) for s in np.random.default_rng(2621).integers(1_000_000, 10_000_000, 8))
#: The held-out seeds of the sixth round (issue 18, after the fifth round's held-out table: does
#: ``budget_mix`` hold on seeds it was not chosen on?), drawn by
#: ``np.random.default_rng(2622).integers(1_000_000, 10_000_000, 8)``, written down and committed with
#: the settings and the criterion before any run on them. Settings: :data:`SETTINGS_ROUND6` (the fifth
#: round's, plus ``budget_mix: 0.5`` for the question-aware cells: half the steps, drawn per seed,
#: under the 2-token budget training the host only; chosen on development seeds 101-124, where it
#: raised accuracy at 2 tokens from 0.843 / 0.877 to 0.994 / 0.998). The baselines are trained as in
#: the fifth round (``cell_settings`` drops the mix keys for them). Declared cell: ``text_cross_attn``
#: (the higher development mean with the mix). Criterion: (a) and (b) of :data:`HELD_OUT_SEEDS_5`, and
#: (c) its accuracy at 2 tokens has a mean of at least 0.95 and no seed below 0.90 (development:
#: 0.998, lowest 0.985). Run once, every cell, every seed reported.
HELD_OUT_SEEDS_6: tuple[int, ...] = tuple(int(s) for s in np.random.default_rng(2622).integers(1_000_000, 10_000_000, 8))
#: The compared cells: (name, mode, variant); ``none`` is the host without GSWA.
CELLS: tuple[tuple[str, str, str], ...] = (
    ("text_guided", "value", "text_guided"),
    ("text_cross_attn", "value", "text_cross_attn"),
    ("self_attn", "value", "self_attn"),
    ("no GSWA", "none", "self_attn"),
)


#: Fifth round (issue 18): four more needle colours, so that an allocator that keeps the wrong needle
#: can only guess among seven colours, not three. The tiny tokenizer has only four colour words, so
#: these colours answer with other words of its vocabulary (class labels: the tiny language model
#: learns every answer word from scratch). Name: (RGB, answer word).
EXTRA_COLOURS: dict[str, tuple[tuple[int, int, int], str]] = {
    "purple": ((135, 35, 200), "cat"),
    "orange": ((245, 135, 10), "cup"),
    "cyan": ((20, 200, 215), "coffee"),
    "pink": ((245, 90, 190), "person"),
}


def palette(colours: int = len(task.COLOURS)) -> list[tuple[str, tuple[int, int, int], str]]:
    """The first ``colours`` needle colours as ``(name, RGB, answer word)``: ``task.COLOURS`` (its
    own words), then :data:`EXTRA_COLOURS`. 4 (the default) is the first four rounds' palette."""
    rows = [(name, rgb, name) for name, rgb in task.COLOURS.items()]
    rows += [(name, rgb, word) for name, (rgb, word) in EXTRA_COLOURS.items()]
    if not 2 <= colours <= len(rows):
        raise ValueError(f"colours={colours}: the two-needle palette has 2 to {len(rows)} colours")
    return rows[:colours]


def answer_ids(colours: int = len(task.COLOURS)) -> torch.Tensor:
    """Token ids of the answers: each palette colour's word, then ``task.NO_NEEDLE``."""
    tok = task._tokenizer()
    return torch.tensor([tok.convert_tokens_to_ids(w) for w in [*(r[2] for r in palette(colours)), task.NO_NEEDLE]])


def make_image(
    rng: np.random.Generator, tile: int, asked_absent: float = 0.0, colours: int = len(task.COLOURS)
) -> tuple[Image.Image, int, int, int, int]:
    """One two-needle image.

    ``asked_absent``: the fraction of images with needles whose *asked* needle is left out (a
    distractor in its tile; the other needle stays) and whose answer is ``task.NO_NEEDLE``. Without
    such images the language model can answer one colour by exclusion (the asked shape is there and
    is not red, green or yellow: blue) without reading that needle (third round of issue 18).
    0 draws exactly the images of the first two rounds.

    ``colours``: the size of the :func:`palette` the needles and the coloured outlines are drawn
    from (4, the default, draws exactly the first four rounds' images).

    Returns:
        ``(image, asked, answer, asked_tile, other_tile)``: the picture, the asked shape (index in
        :data:`ASKED`), the answer's index in ``task.answer_words()``, and the row-major tiles of
        the asked and the other needle (-1 for both in an image without needles; ``asked_tile``
        -1 and ``other_tile`` the other needle's in an image whose asked needle is left out).
    """
    size = task.GRID * tile
    bg = int(rng.integers(215, 250))
    img = Image.new("RGB", (size, size), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    rgb = [row[1] for row in palette(colours)]
    asked = int(rng.integers(len(ASKED)))
    tiles = rng.choice(task.GRID * task.GRID, size=2, replace=False)  # square's tile, circle's tile
    pair = rng.choice(len(rgb), size=2, replace=False)  # two different colours
    needles = {int(tiles[0]): (0, int(pair[0])), int(tiles[1]): (1, int(pair[1]))}
    answer, asked_tile, other_tile = int(pair[asked]), int(tiles[asked]), int(tiles[1 - asked])
    if rng.random() < task.NO_NEEDLE_FRACTION:
        needles, answer, asked_tile, other_tile = {}, len(rgb), -1, -1
    elif asked_absent and rng.random() < asked_absent:
        del needles[asked_tile]
        answer, asked_tile = len(rgb), -1
    for t in range(task.GRID * task.GRID):
        r, c = divmod(t, task.GRID)
        if t in needles:  # large: a square's corners then fill the corners of the tile's 2x2 patches
            side = int(rng.integers(tile * 75 // 100, tile * 85 // 100))
        else:
            side = int(rng.integers(tile * 4 // 10, tile * 7 // 10))
        x0 = c * tile + int(rng.integers(2, tile - side - 1))
        y0 = r * tile + int(rng.integers(2, tile - side - 1))
        box = (x0, y0, x0 + side, y0 + side)
        kind = int(rng.integers(3))
        if t in needles:
            shape, colour = needles[t]
            task._shape(draw, box, shape, fill=rgb[colour])
        elif rng.random() < 0.5:
            g = int(rng.integers(90, 170))
            task._shape(draw, box, kind, fill=(g, g, g))
        else:
            colour = rgb[int(rng.integers(len(rgb)))]
            task._shape(draw, box, kind, outline=colour, width=max(1, tile // 28))
    return img, asked, answer, asked_tile, other_tile


@dataclass
class TwoNeedleData:
    """Tiled images: ``pixel_values [images, 10, 3, t, t]``, and per image the asked shape, the
    answer, and the tiles of the asked and the other needle."""

    pixel_values: torch.Tensor
    asked: torch.Tensor
    answer: torch.Tensor
    asked_tile: torch.Tensor
    other_tile: torch.Tensor
    #: the answers' token ids (:func:`answer_ids` of the palette the images were drawn with)
    answers: torch.Tensor = dataclass_field(default_factory=answer_ids)

    def __len__(self) -> int:
        return int(self.answer.shape[0])


def make_data(
    n: int, seed: int, tile: int = 28, proc: Any = None, asked_absent: float = 0.0, colours: int = len(task.COLOURS)
) -> TwoNeedleData:
    rng = np.random.default_rng(seed)
    proc = proc or task.processor(tile)
    rows: list[tuple] = []
    pix = []
    for _ in range(n):
        img, *row = make_image(rng, tile, asked_absent, colours)
        pv = proc.image_processor(images=[img], return_tensors="pt")["pixel_values"]
        if pv.shape[0] != task.GRID * task.GRID + 1:
            raise RuntimeError(f"the processor cut an image into {pv.shape[0]} views, expected 10")
        pix.append(pv)
        rows.append(tuple(row))
    cols = [torch.tensor(c) for c in zip(*rows)]
    return TwoNeedleData(torch.stack(pix), *cols, answers=answer_ids(colours))


def prompts(tokens_per_view: int) -> torch.Tensor:
    """``[len(ASKED), seq]``: the prompt ids asking for each shape (same length)."""
    tok = task._tokenizer()
    out = []
    for word in ASKED:
        text = "<img>" + "<IMG_CONTEXT>" * (tokens_per_view * 10) + f"</img> what colour is the {word} ?"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if tok.unk_token_id in ids:
            raise RuntimeError(f"the question about the {word} has words outside the tiny vocabulary")
        out.append(ids)
    return torch.tensor(out)


def _forward(model: Any, ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, pixel_values=pixel_values.flatten(0, 1), logits_to_keep=1)
    return out.logits[:, -1]


@torch.no_grad()
def evaluate(model: Any, handle: Any, data: TwoNeedleData, prompt: torch.Tensor, chunk: int = 128) -> dict[str, Any]:
    """Accuracy, hit rate on the asked tile and on the other needle's tile (images with needles)."""
    from gswa_plugin import api

    was = model.training
    model.eval()
    answers = data.answers
    correct, weights = [], []
    for s in range(0, len(data), chunk):
        sl = slice(s, s + chunk)
        logits = _forward(model, prompt[data.asked[sl]], data.pixel_values[sl])
        correct.append(logits[:, answers].argmax(-1) == data.answer[sl])
        if handle is not None:
            weights.append(torch.stack(api.last_weights(model)).float())
    model.train(was)
    res: dict[str, Any] = {"accuracy": float(torch.cat(correct).float().mean()), "hit_asked": None, "hit_other": None}
    if weights:
        w = torch.cat(weights)
        has = data.asked_tile >= 0
        top = w[has].argmax(-1)
        res["hit_asked"] = float((top == data.asked_tile[has]).float().mean())
        res["hit_other"] = float((top == data.other_tile[has]).float().mean())
        hit = top == data.asked_tile[has]
        res["hit_by_question"] = {q: float(hit[data.asked[has] == k].float().mean()) for q, k in ASKED.items()}
    return res


#: Token-budget methods evaluated on every trained model (``budget_eval``); the host without GSWA
#: gets an identity GSWA (every weight 1) for them, so there ``gswa`` is the same as ``uniform``.
BUDGET_METHODS: tuple[str, ...] = ("gswa", "uniform", "random", "globalcom")


def budget_spec(keep: int, method: str, seed: int, thumbnail: bool = True) -> dict[str, Any]:
    """The ``budget:`` block of one evaluation: ``keep`` visual tokens per image (28 px tiles: one
    per view), exactly one of them the thumbnail's, the other ``keep - 1`` given to tiles by
    ``method``. ``thumbnail=False``: all ``keep`` go to tiles, the thumbnail keeps none (``keep: 1``
    as the fraction 1/10 of the 10 views, since a count of 1 is refused as ambiguous)."""
    if not thumbnail:
        count: float | int = keep / (task.GRID * task.GRID + 1) if keep == 1 else int(keep)
        return {"keep": count, "method": method, "thumbnail_share": 0.0, "seed": seed}
    return {"keep": int(keep), "method": method, "thumbnail_share": 1.0 / keep, "seed": seed}


@torch.no_grad()
def evaluate_budgets(
    model: Any, handle: Any, cfg: task.RunConfig, data: TwoNeedleData, prompt: torch.Tensor, keeps: list[int],
    thumbnail: bool = True,
) -> dict[str, dict[str, float]]:
    """The trained model's accuracy under token budgets, per ``method@keep``: ``accuracy``, and over
    the images with the asked needle how often its tile kept its token (``kept_asked``) and the other
    needle's did (``kept_other``). A host without GSWA gets an identity GSWA for the budget (its
    weights are all 1: the model's output is unchanged), removed afterwards."""
    from gswa_plugin import api

    own = handle
    if handle is None:
        handle = api.enable(model, {"variant": "self_attn", "mode": "value", "summary": cfg.summary, "seed": cfg.seed})
        assert handle.module.is_identity()
    was = model.training
    model.eval()
    answers = data.answers
    has = data.asked_tile >= 0
    out: dict[str, dict[str, float]] = {}
    try:
        for keep in keeps:
            for method in BUDGET_METHODS:
                api.set_budget(model, budget_spec(keep, method, cfg.seed, thumbnail))
                correct, kept = [], []
                for s in range(0, len(data), 128):
                    sl = slice(s, s + 128)
                    logits = _forward(model, prompt[data.asked[sl]], data.pixel_values[sl])
                    correct.append(logits[:, answers].argmax(-1) == data.answer[sl])
                    quotas = torch.tensor(handle.last_budget.selection.quotas).view(-1, task.GRID * task.GRID + 1)
                    kept.append(quotas[:, : task.GRID * task.GRID] > 0)  # thumbnail last
                k = torch.cat(kept)[has]
                rows = torch.arange(int(has.sum()))
                out[f"{method}@{keep}"] = {
                    "accuracy": float(torch.cat(correct).float().mean()),
                    "kept_asked": float(k[rows, data.asked_tile[has]].float().mean()),
                    "kept_other": float(k[rows, data.other_tile[has]].float().mean()),
                }
    finally:
        api.set_budget(model, None)
        if own is None:
            api.disable(model)
        model.train(was)
    return out


def budget_mix_steps(cfg: task.RunConfig, fraction: float) -> frozenset[int]:
    """The training steps that ``budget_mix`` runs under the budget: ``round(fraction * steps)`` of
    them, drawn without replacement by a generator of their own seeded from ``cfg.seed`` (the data
    order's generator is left alone). Empty for ``fraction`` 0."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"budget_mix must lie in [0, 1], got {fraction}")
    count = round(fraction * cfg.steps)
    if not count:
        return frozenset()
    return frozenset(int(s) for s in np.random.default_rng((cfg.seed, 18)).permutation(cfg.steps)[:count])


#: The diagnostic ``grad_asked`` / ``grad_other`` of a run: over the training images with needles of
#: the last GRAD_STEPS steps, how often the tile with the most negative ``dL/dw`` (the target
#: :func:`gswa_plugin.weighting.importance_loss` puts first) is the asked / the other needle's tile.
GRAD_STEPS = 100


def train(
    cfg: task.RunConfig,
    train_data: TwoNeedleData,
    eval_data: TwoNeedleData,
    budget_keeps: list[int] | None = None,
    budget_train: int | None = None,
    budget_thumbnail: bool = True,
    budget_mix: float = 0.0,
    budget_mix_keep: int = 2,
    budget_mix_gswa: bool = False,
) -> dict[str, Any]:
    """One run: the training loop of ``task.train`` with one question per sample; with
    ``budget_keeps`` the trained model is also evaluated under those token budgets (``budget``).

    ``budget_train``: train under a budget of that many visual tokens per image (the thumbnail's
    and ``budget_train - 1`` tiles'; :func:`budget_spec`): a GSWA cell with ``method: gswa``, the
    host without GSWA with ``uniform`` through an identity GSWA whose parameters stay frozen (removed
    before the evaluation). The full-token and budget evaluations are as without it.
    ``budget_thumbnail=False``: every budget gives the thumbnail no token (:func:`budget_spec`).
    ``budget_mix``: a GSWA cell trained with every token runs that fraction of its steps (chosen by
    :func:`budget_mix_steps`) under a budget of ``budget_mix_keep`` visual tokens per image
    (``method: gswa``, :func:`budget_spec`), the others with every token; the budget is removed
    before the evaluation. The full-token steps give GSWA the gradient of every tile's weight, the
    budget steps show the language model the few tokens it gets at evaluation and leave GSWA's
    parameters alone (no importance term, no gradient, no optimizer step for them); with
    ``budget_mix_gswa=True`` they train GSWA too (its loss and importance term under the budget,
    where a dropped tile's weight gets no gradient). The grad diagnostics count the full-token
    steps only."""
    from gswa_plugin import api

    start = time.perf_counter()
    model, handle = task.build_model(cfg)
    mixed = budget_mix_steps(cfg, budget_mix)
    if mixed and (handle is None or budget_train):
        raise ValueError("budget_mix needs a GSWA cell trained with every token (no budget_train)")
    mix_spec = budget_spec(budget_mix_keep, "gswa", cfg.seed, budget_thumbnail)
    under = False  # whether the mix budget is set now
    if budget_train:
        if handle is None:
            frozen = api.enable(model, {"variant": "self_attn", "mode": "value", "summary": cfg.summary, "seed": cfg.seed})
            frozen.module.requires_grad_(False)
        method = "uniform" if handle is None else "gswa"
        api.set_budget(model, budget_spec(budget_train, method, cfg.seed, budget_thumbnail))
    opt, gswa = task.make_optimizer(model, cfg)
    order = torch.Generator().manual_seed(cfg.seed)
    answers = train_data.answers
    prompt = prompts((cfg.tile // 14) ** 2 // 4)
    # with GSWA the per-tile gradient dL/dw is always recorded (diagnostics); it joins the loss
    # only with ``importance_weight`` (task.ImportanceTerm, the same wiring as the single-needle task)
    importance = task.ImportanceTerm(model, cfg, gswa) if handle is not None else None
    grad_top: list[torch.Tensor] = []  # per needle image of the last GRAD_STEPS steps: argmin_i dL/dw_i
    grad_tiles: list[torch.Tensor] = []
    model.train()
    n, pos, perm = len(train_data), 0, None
    try:
        for step in range(cfg.steps):
            if (step in mixed) != under:
                under = not under
                api.set_budget(model, mix_spec if under else None)
            if perm is None or pos + cfg.batch_size > n:
                perm, pos = torch.randperm(n, generator=order), 0
            idx = perm[pos : pos + cfg.batch_size]
            pos += cfg.batch_size
            logits = _forward(model, prompt[train_data.asked[idx]], train_data.pixel_values[idx])
            loss = torch.nn.functional.cross_entropy(logits[:, answers], train_data.answer[idx])
            opt.zero_grad(set_to_none=True)
            if under and not budget_mix_gswa:
                loss.backward()
                for p in gswa:
                    p.grad = None  # AdamW skips a parameter without a gradient (no decay, no moments)
                if importance is not None:
                    importance.discard()
            elif importance is None:
                loss.backward()
            else:
                importance.backward(loss)
                if importance.last is not None and step >= cfg.steps - GRAD_STEPS and not under:
                    g = importance.last[1].view(len(idx), -1)[:, :-1]  # thumbnail last
                    has = train_data.asked_tile[idx] >= 0
                    grad_top.append(g[has].argmin(-1))
                    tiles = [train_data.asked_tile[idx][has], train_data.other_tile[idx][has]]
                    grad_tiles.append(torch.stack(tiles, -1))
            opt.step()
    finally:
        if under:
            api.set_budget(model, None)
    if importance is not None:
        importance.hook.remove()
    if budget_train:
        if handle is None:
            api.disable(model)
        else:
            api.set_budget(model, None)
    res = evaluate(model, handle, eval_data, prompt)
    if budget_keeps:
        res["budget"] = evaluate_budgets(model, handle, cfg, eval_data, prompt, budget_keeps, budget_thumbnail)
    if grad_top:
        top, tiles = torch.cat(grad_top), torch.cat(grad_tiles)
        res["grad_asked"] = float((top == tiles[:, 0]).float().mean())
        res["grad_other"] = float((top == tiles[:, 1]).float().mean())
    return {**res, "wall_s": time.perf_counter() - start}


#: The settings of every run (tuned on the development seeds only).
#: ``text_layers: 1``: the last position cannot bind the question word to a tile by itself (with
#: 2 layers the host alone answered every question on the development seed 101).
#: Issue 18, second round, on the 8 :data:`DEV_SEEDS` (raw lines in ``two_needle_dev.jsonl``): the
#: importance term (``importance_weight``, ``importance_temperature``, see
#: :class:`benchmarks.needle.task.ImportanceTerm`) at weights 1, 3, 10 and temperatures 0.5, 1, with
#: GSWA's ``temperature`` 2, 1, 0.5, 0.25. Criterion, written down before the held-out run: the
#: ``text_guided`` candidate with the highest *smallest* dev hit rate on the asked tile, ties by the
#: mean; the other cells take the same settings (image-only ``self_attn`` with the same term).
#: Chosen: weight 3, importance temperature 1, GSWA temperature 0.5 (dev hit 0.75-1.00, mean 0.91).
#: Third round (the second round's held-out hit 0.77-1.00): on the weak dev seeds almost every miss was one
#: needle colour per question whose tile GSWA did not raise (seed 105: yellow, seed 103: blue circles),
#: the lost colour of the single-needle task. Candidate: the single-needle task's recommended scorer
#: input (``score_input: squared_deviation``, ``summary: mean``, ``gswa_lr: 3e-3``, which now reaches
#: the text variants) on top of the second round's settings, 800 steps. Criterion, written down
#: before its dev results were read and before any held-out run: adopted if ``text_guided`` on the 24
#: :data:`DEV_SEEDS` has a mean hit rate >= 0.90 and no seed below 0.80 (the issue's target, on dev);
#: otherwise :data:`HELD_OUT_SEEDS` are not run. Result: not adopted (seeds 103 and 104 at 0.68 and
#: 0.78 among the first five, so the run was stopped): there one colour (blue) was lost for both
#: questions, and the answer loss's per-tile gradient almost never pointed at a blue asked needle
#: (0-6 % of seed 104's evaluation images with importance temperature 0.5, against 37-96 % for the other colours): the language model
#: answered blue by exclusion, so neither the answer loss nor the importance term asked for that tile.
#: Second candidate, from probes on seeds 103 and 104 only: the task's ``asked_absent: 0.25`` (a
#: quarter of the images with needles lose the asked needle and answer ``tile``, which removes the
#: exclusion route; see :func:`make_image`) with the first candidate's settings and importance
#: temperature 0.5. Same criterion, written down before its 24 dev runs; if it fails, no held-out run.
#: Result: adopted (``text_guided`` dev hit rate 0.99 on average, 0.85-1.00 over the 24 seeds). The
#: second round's settings are :data:`SETTINGS_ROUND2` (``--round 2``; their held-out draw is used).
SETTINGS: dict[str, Any] = {
    "steps": 800,
    "train_images": 800,
    "eval_images": 200,
    "asked_absent": 0.25,
    "run": {
        "text_layers": 1,
        "temperature": 0.5,
        "importance_weight": 3.0,
        "importance_temperature": 0.5,
        "score_input": "squared_deviation",
        "summary": "mean",
        "gswa_lr": 3e-3,
    },
}
#: The second round's settings (task without ``asked_absent``); reported with ``--round 2``.
SETTINGS_ROUND2: dict[str, Any] = {
    "steps": 800,
    "train_images": 800,
    "eval_images": 200,
    "run": {"text_layers": 1, "temperature": 0.5, "importance_weight": 3.0, "importance_temperature": 1.0},
}


#: Fourth round (issue 18): the third round's settings, and every trained model also evaluated under
#: token budgets of 2 and 3 visual tokens per image (the thumbnail's and 1 or 2 of the 9 tiles'; 28 px
#: tiles give one token per view), by every method of :data:`BUDGET_METHODS` (:func:`evaluate_budgets`).
SETTINGS_ROUND4: dict[str, Any] = {**json.loads(json.dumps(SETTINGS)), "budget_eval": [2, 3]}
#: Fourth round: per cell, the budget it is trained under (``budget_train``; ``None``: trained with
#: every token and only evaluated under the budgets), chosen on the development seeds (see
#: :data:`HELD_OUT_SEEDS_BUDGET`).
CELL_BUDGET_TRAIN: dict[str, int | None] = {"text_guided": None, "text_cross_attn": None, "self_attn": 2, "no GSWA": 2}


#: The settings of ``budget_mix`` (:func:`train`); only a GSWA cell trained with every token keeps them.
MIX_KEYS: tuple[str, ...] = ("budget_mix", "budget_mix_keep", "budget_mix_gswa")


def cell_settings(settings: dict[str, Any], cell: str, per_cell: bool) -> dict[str, Any]:
    """The settings one cell runs with: ``settings``, plus with ``per_cell`` (fourth round) the
    cell's :data:`CELL_BUDGET_TRAIN` entry; a cell without GSWA or trained under a budget drops the
    :data:`MIX_KEYS` (so its settings, and its rows, are those of the run without them)."""
    budget_train = CELL_BUDGET_TRAIN.get(cell) if per_cell else None
    if budget_train is not None or settings.get("budget_train") or next(c[1] for c in CELLS if c[0] == cell) == "none":
        settings = {k: v for k, v in settings.items() if k not in MIX_KEYS}
    return settings if budget_train is None else {**settings, "budget_train": budget_train}


#: Fifth round (issue 18): the fourth round's settings on images with eight needle colours
#: (:data:`EXTRA_COLOURS`), so that keeping the wrong needle leaves a guess among seven colours; the
#: budget lowers what an image-only allocator can reach: about 0.4 + 0.6 x (1/2 + 1/2 x 1/7) = 0.74
#: against the fourth round's 0.80. Cells trained as :data:`CELL_BUDGET_TRAIN` says.
SETTINGS_ROUND5: dict[str, Any] = {**json.loads(json.dumps(SETTINGS_ROUND4)), "colours": 8}

#: Sixth round (issue 18): the fifth round's settings, the question-aware cells trained with
#: ``budget_mix: 0.5`` (:func:`train`); see :data:`HELD_OUT_SEEDS_6`.
SETTINGS_ROUND6: dict[str, Any] = {**json.loads(json.dumps(SETTINGS_ROUND5)), "budget_mix": 0.5}

#: Settings by ``--round``.
ROUNDS: dict[int, dict[str, Any]] = {
    2: SETTINGS_ROUND2, 3: SETTINGS, 4: SETTINGS_ROUND4, 5: SETTINGS_ROUND5, 6: SETTINGS_ROUND6,
}


#: ``--set`` keys that shape the images rather than the run (``make_image``'s ``asked_absent``).
DATA_KEYS: tuple[str, ...] = (
    "asked_absent", "colours", "budget_eval", "budget_train", "budget_thumbnail", "budget_mix", "budget_mix_keep",
    "budget_mix_gswa",
)


def run_cell(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    torch.set_num_threads(1)
    cell, seed, settings = job
    _, mode, variant = next(c for c in CELLS if c[0] == cell)
    cfg = replace(task.RunConfig(), mode=mode, variant=variant, seed=seed, steps=settings["steps"], eval_every=0)
    cfg = replace(cfg, **settings.get("run", {}))
    proc = task.processor(cfg.tile)
    # each seed resamples its images: training and evaluation data from the seed's own generators
    absent, colours = settings.get("asked_absent", 0.0), settings.get("colours", len(task.COLOURS))
    train_data = make_data(settings["train_images"], seed * 10 + 1, cfg.tile, proc, absent, colours)
    eval_data = make_data(settings["eval_images"], seed * 10 + 2, cfg.tile, proc, absent, colours)
    res = train(
        cfg, train_data, eval_data, settings.get("budget_eval"), settings.get("budget_train"),
        settings.get("budget_thumbnail", True), settings.get("budget_mix", 0.0), settings.get("budget_mix_keep", 2),
        settings.get("budget_mix_gswa", False),
    )
    return {"cell": cell, "seed": seed, "settings": settings, "config": asdict(cfg), **res}


def report(rows: list[dict[str, Any]], seeds: tuple[int, ...]) -> str:
    """The per-seed Markdown table (hit rate on the asked tile / accuracy), then mean and spread."""
    names = [c[0] for c in CELLS]
    by = {(r["cell"], r["seed"]): r for r in rows}
    head = "| seed | " + " | ".join(names) + " |\n|---|" + "---|" * len(names)
    lines = [head]

    def fmt(r: dict | None) -> str:
        if r is None:
            return "-"
        hit = "-" if r["hit_asked"] is None else f"{r['hit_asked']:.2f}"
        return f"{hit} / {r['accuracy']:.2f}"

    for s in seeds:
        lines.append(f"| {s} | " + " | ".join(fmt(by.get((n, s))) for n in names) + " |")
    for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max)):
        cells = []
        for n in names:
            got = [by[(n, s)] for s in seeds if (n, s) in by]
            hits = [r["hit_asked"] for r in got if r["hit_asked"] is not None]
            accs = [r["accuracy"] for r in got]
            cells.append(("-" if not hits else f"{fn(hits):.2f}") + " / " + ("-" if not accs else f"{fn(accs):.2f}"))
        lines.append(f"| {stat} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The columns of the budget table: (heading, cell, budget method).
BUDGET_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("text_guided", "text_guided", "gswa"),
    ("text_cross_attn", "text_cross_attn", "gswa"),
    ("self_attn", "self_attn", "gswa"),
    ("no GSWA, uniform", "no GSWA", "uniform"),
    ("no GSWA, random", "no GSWA", "random"),
    ("no GSWA, globalcom", "no GSWA", "globalcom"),
)


def budget_accuracy(row: dict[str, Any], method: str, keep: int) -> float | None:
    got = row.get("budget", {}).get(f"{method}@{keep}")
    return None if got is None else got["accuracy"]


def report_budget(rows: list[dict[str, Any]], seeds: tuple[int, ...], keep: int) -> str:
    """Accuracy at ``keep`` visual tokens per image, per seed: each cell's trained model with its
    budget method (:data:`BUDGET_COLUMNS`), then mean, standard deviation, min and max."""
    by = {(r["cell"], r["seed"]): r for r in rows}
    names = [c[0] for c in BUDGET_COLUMNS]
    lines = ["| seed | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    values: dict[str, list[float]] = {n: [] for n in names}
    for s in seeds:
        cells = []
        for name, cell, method in BUDGET_COLUMNS:
            r = by.get((cell, s))
            a = None if r is None else budget_accuracy(r, method, keep)
            if a is not None:
                values[name].append(a)
            cells.append("-" if a is None else f"{a:.2f}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    for stat, fn in (("mean", np.mean), ("sd", lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0), ("min", np.min), ("max", np.max)):
        lines.append(f"| {stat} | " + " | ".join("-" if not values[n] else f"{fn(values[n]):.3f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="dev", help="dev, heldout-5 (fifth round), heldout-budget (fourth round), heldout / heldout-1825 / heldout-stop24 (used), or a comma list of seeds")
    ap.add_argument("--cells", default=",".join(c[0] for c in CELLS))
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--report", action="store_true", help="print the held-out table and exit")
    ap.add_argument("--round", type=int, default=6, choices=sorted(ROUNDS),
                    help="2: the second round's settings and task; 3: the third round's; 4: 3 + token budgets; "
                    "5: 4 on images with eight needle colours; 6: 5 with budget_mix 0.5 for the question-aware cells")
    ap.add_argument("--keep", type=int, default=2, help="--report: the budget (visual tokens per image) of the table")
    ap.add_argument("--set", action="append", default=[], help="tuning on dev seeds: KEY=VALUE (a SETTINGS key or a RunConfig field)")
    args = ap.parse_args(argv)
    settings = json.loads(json.dumps(ROUNDS[args.round]))
    for item in args.set:
        k, v = item.split("=", 1)
        value = json.loads(v) if v[:1] in "0123456789-[{tfn" else v
        if k in settings or k in DATA_KEYS:
            settings[k] = value
        else:
            settings["run"][k] = value
    named = {"dev": DEV_SEEDS, "heldout": HELD_OUT_SEEDS, "heldout-frozen": HELD_OUT_SEEDS_FROZEN,
             "heldout-budget": HELD_OUT_SEEDS_BUDGET, "heldout-5": HELD_OUT_SEEDS_5, "heldout-6": HELD_OUT_SEEDS_6,
             "heldout-1825": HELD_OUT_SEEDS_1825,
             "heldout-stop24": HELD_OUT_SEEDS_STOP24}
    seeds = named.get(args.seeds) or tuple(int(s) for s in args.seeds.split(","))
    # fourth round: each cell with its own budget_train (CELL_BUDGET_TRAIN) unless --set gives one
    per_cell = args.round >= 4 and "budget_train" not in settings
    cells = args.cells.split(",")
    wanted = {c: cell_settings(settings, c, per_cell) for c in [c[0] for c in CELLS]}
    rows = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()] if args.out.exists() else []
    rows = [r for r in rows if r["settings"] == wanted.get(r["cell"])]
    if args.report:
        print(report(rows, seeds))
        if settings.get("budget_eval"):
            print()
            print(report_budget(rows, seeds, args.keep))
        return 0
    done = {(r["cell"], r["seed"]) for r in rows}
    todo = [(c, s, wanted[c]) for s in seeds for c in cells if (c, s) not in done]
    print(f"{len(todo)} runs to do", flush=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool, args.out.open("a") as f:
        for res in pool.imap_unordered(run_cell, todo):
            f.write(json.dumps(res) + "\n")
            f.flush()
            print(
                f"{res['cell']:<16} seed {res['seed']:>6}  hit(asked) {res['hit_asked']}  hit(other) {res['hit_other']}  "
                f"by question {res.get('hit_by_question')}  grad(asked/other) {res.get('grad_asked')}/{res.get('grad_other')}  "
                f"acc {res['accuracy']:.3f}  {res['wall_s']:.0f}s",
                flush=True,
            )
            for name, got in res.get("budget", {}).items():
                print(f"    budget {name:<12} acc {got['accuracy']:.3f}  kept asked {got['kept_asked']:.2f}  "
                      f"kept other {got['kept_other']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
