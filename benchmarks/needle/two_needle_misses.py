"""Where a two-needle run misses: one run of :mod:`benchmarks.needle.two_needle` (a development
seed), then per question the hit rate by the colours of the asked and the other needle, what holds
the largest weight when it is not the asked tile, and how often the answer loss's per-tile
gradient points at the asked needle (the tile with the most negative ``dL/dw``, the first choice of
the importance term's target), by the asked needle's colour.

Issue 18, third round: this showed that the weak seeds lose one needle colour (and that the
answer loss's gradient almost never points at that colour's tile: the language model answered it by
exclusion).

    nice -n 19 python benchmarks/needle/two_needle_misses.py 105 --round 2 --set steps=1600
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks.needle import task  # noqa: E402
from benchmarks.needle import two_needle as tn  # noqa: E402


def tile_contents(n: int, seed: int, tile: int, asked_absent: float) -> list[list[tuple[int, str]]]:
    """Per image of ``make_data(n, seed, ...)`` and per tile: ``(shape kind, colour)``, where the
    colour is a colour name for a filled saturated shape, ``grey`` or ``outline-<name>``."""
    names = {tuple(v): k for k, v in task.COLOURS.items()}
    rng = np.random.default_rng(seed)
    drawn: list[tuple[int, str]] = []
    original = task._shape

    def spy(draw: Any, box: Any, kind: int, **style: Any) -> None:
        fill, outline = style.get("fill"), style.get("outline")
        drawn.append((kind, names.get(tuple(fill), "grey") if fill else "outline-" + names[tuple(outline)]))
        original(draw, box, kind, **style)

    task._shape = spy
    out = []
    try:
        for _ in range(n):
            drawn.clear()
            tn.make_image(rng, tile, asked_absent)
            out.append(list(drawn))
    finally:
        task._shape = original
    return out


def breakdown(model: Any, data: tn.TwoNeedleData, prompt: torch.Tensor, contents: list) -> dict[str, Any]:
    """The per-question tables of a trained model on ``data`` (see the module's docstring)."""
    from gswa_plugin import api

    model.eval()
    with torch.no_grad():
        tn._forward(model, prompt[data.asked], data.pixel_values)
        weights = torch.stack(api.last_weights(model)).float()
    seen: dict[str, torch.Tensor] = {}

    def keep(module: Any, args: Any, w: torch.Tensor) -> None:
        w.retain_grad()
        seen["w"] = w

    hook = model.gswa.register_forward_hook(keep)
    try:
        logits = tn._forward(model, prompt[data.asked], data.pixel_values)
        torch.nn.functional.cross_entropy(logits[:, task.answer_ids()], data.answer, reduction="sum").backward()
    finally:
        hook.remove()
    grads = seen["w"].grad.view(len(data), -1)[:, :-1]  # thumbnail last
    out: dict[str, Any] = {}
    for word, q in tn.ASKED.items():
        pairs, colour_grad = collections.defaultdict(list), collections.defaultdict(list)
        misses: collections.Counter = collections.Counter()
        for i in range(len(data)):
            at, ot = int(data.asked_tile[i]), int(data.other_tile[i])
            if at < 0 or int(data.asked[i]) != q:
                continue
            top, asked_colour, other_colour = int(weights[i].argmax()), contents[i][at][1], contents[i][ot][1]
            pairs[f"{asked_colour} vs {other_colour}"].append(top == at)
            colour_grad[asked_colour].append(int(grads[i].argmin()) == at)
            if top != at:
                misses["other needle" if top == ot else f"distractor {contents[i][top][1]}"] += 1
        out[word] = {
            "hit_by_colours": {k: [len(v), round(float(np.mean(v)), 2)] for k, v in sorted(pairs.items())},
            "misses": dict(misses),
            "grad_on_asked_by_colour": {k: round(float(np.mean(v)), 2) for k, v in sorted(colour_grad.items())},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seed", type=int, help="a development seed (tn.DEV_SEEDS)")
    ap.add_argument("--round", type=int, default=3, choices=(2, 3))
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE as in two_needle.py")
    args = ap.parse_args(argv)
    if args.seed not in tn.DEV_SEEDS:
        raise SystemExit(f"{args.seed} is not a development seed: diagnose on development seeds only")
    torch.set_num_threads(1)
    settings = json.loads(json.dumps(tn.SETTINGS_ROUND2 if args.round == 2 else tn.SETTINGS))
    for item in args.set:
        k, v = item.split("=", 1)
        value = json.loads(v) if v[:1] in "0123456789-[{tfn" else v
        (settings if k in settings or k in tn.DATA_KEYS else settings["run"])[k] = value
    cfg = replace(task.RunConfig(), mode="value", variant="text_guided", seed=args.seed, steps=settings["steps"], eval_every=0)
    cfg = replace(cfg, **settings["run"])
    absent = settings.get("asked_absent", 0.0)
    proc = task.processor(cfg.tile)
    train_data = tn.make_data(settings["train_images"], args.seed * 10 + 1, cfg.tile, proc, absent)
    eval_data = tn.make_data(settings["eval_images"], args.seed * 10 + 2, cfg.tile, proc, absent)
    kept: dict[str, Any] = {}
    evaluate = tn.evaluate

    def keep_model(model: Any, handle: Any, data: Any, prompt: torch.Tensor, chunk: int = 128) -> dict[str, Any]:
        kept.update(model=model, prompt=prompt)
        return evaluate(model, handle, data, prompt, chunk)

    tn.evaluate = keep_model  # tn.train builds, trains and evaluates the model; keep it for the breakdown
    try:
        res = tn.train(cfg, train_data, eval_data)
    finally:
        tn.evaluate = evaluate
    contents = tile_contents(settings["eval_images"], args.seed * 10 + 2, cfg.tile, absent)
    table = breakdown(kept["model"], eval_data, kept["prompt"], contents)
    print(json.dumps({"seed": args.seed, "hit_asked": res["hit_asked"], "hit_by_question": res.get("hit_by_question"),
                      "accuracy": res["accuracy"], **table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
