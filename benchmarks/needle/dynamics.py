"""Why the allocator locks onto a colour direction: per-colour measurements over training.

For each run (a dev seed and a configuration), every 25 steps on the seed's held-out images:

- the hit rate and the mean needle-tile weight per answer colour;
- the gradient of the answer loss reaching GSWA's scorer, per colour: the norm of
  ``d loss / d logits`` over the tiles of each image (the loss summed over images, so the
  numbers are per image), averaged over the images whose needle has that colour;

- what the scorer reads (``score_input: squared_deviation``): each tile's *distinctiveness*
  ``sum_c (LN(s_i) - mean_tiles LN(s))_c**2``, averaged over the needle tiles of each colour and over
  the grey and outline distractors, and how often the needle is the image's most distinct tile
  (per colour): an untrained, colour-agnostic ranking;
- the size of GSWA's training steps: the RMS of the gradient of GSWA's parameters and the RMS of
  the change AdamW makes to them, averaged over each window of 25 training steps (Adam divides the
  step by the gradient's running RMS, so a near-zero gradient can still move GSWA at full speed);

and at initialisation and after training, a linear probe (multinomial logistic regression, half
of the images to fit, half to score) of the needle colour from what GSWA reads: the needle tile's
summary and the thumbnail's summary (LayerNorm'd, as the scorer's input norm sees them).

    python benchmarks/needle/dynamics.py --seeds 1,2 --tags base,td     # writes dynamics.json and .md here
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

HERE = Path(__file__).resolve().parent
#: Configurations compared (``RunConfig`` overrides on top of the defaults). ``rec``: the configuration
#: recommended before the third attempt (CLS summaries); ``imp1``: it plus the importance term;
#: ``smean``: the recommended configuration since the third attempt (mean-token summaries);
#: ``smean600``: it trained for 600 steps; ``s600wd1``: that plus GSWA weight decay 1 (fourth attempt).
CONFIGS: dict[str, dict] = {
    "base": {},
    "td": {"tile_dropout": 1.0},
    "rec": {"score_input": "squared_deviation", "gswa_lr": 3e-3},
    "imp1": {"score_input": "squared_deviation", "gswa_lr": 3e-3, "importance_weight": 1.0},
    "smean": {"score_input": "squared_deviation", "gswa_lr": 3e-3, "summary": "mean"},
    "smean600": {"score_input": "squared_deviation", "gswa_lr": 3e-3, "summary": "mean", "steps": 600},
    "s600wd1": {"score_input": "squared_deviation", "gswa_lr": 3e-3, "summary": "mean", "steps": 600,
                "gswa_weight_decay": 1.0},
}


def _summaries(model, data, ids) -> torch.Tensor:
    from benchmarks.needle import task as needle

    cap = {}
    hook = model.gswa.register_forward_pre_hook(lambda mod, args: cap.__setitem__("s", args[0].detach()))
    model.eval()
    with torch.no_grad():
        needle._forward(model, ids, data.pixel_values)
    hook.remove()
    s = cap["s"].view(len(data), data.pixel_values.shape[1], -1)
    return torch.nn.functional.layer_norm(s, s.shape[-1:])


def probe(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> float:
    """Held-out accuracy of a linear softmax classifier fitted on the first half of ``(x, y)``."""
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    h = len(y) // 2
    lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x[:h]), y[:h]).backward()
        opt.step()
    return float((lin(x[h:]).argmax(-1) == y[h:]).float().mean())


def distinctiveness(s: torch.Tensor, kinds: list[list[str]], answer: torch.Tensor, needle_tile: torch.Tensor) -> dict:
    """Squared deviation from the image's mean tile (LayerNorm'd summaries ``s [images, views, dim]``,
    thumbnail last) per kind of tile, and the share of images whose most distinct tile is the needle."""
    from benchmarks.needle import task as needle

    tiles = s[:, :-1]
    d = ((tiles - tiles.mean(1, keepdim=True)) ** 2).sum(-1)  # [images, 9]
    names = needle.answer_words()[: len(needle.COLOURS)]
    kind = [[k for k in row] for row in kinds]
    out: dict[str, float] = {}
    for a, n in enumerate(names):
        rows = (answer == a).nonzero().flatten()
        out[f"needle {n}"] = round(float(d[rows, needle_tile[rows]].mean()), 3)
        out[f"top {n}"] = round(float((d[rows].argmax(-1) == needle_tile[rows]).float().mean()), 3)
    for k in ("grey", "outline"):
        vals = [d[i, t] for i, row in enumerate(kind) for t, x in enumerate(row) if x == k]
        out[k] = round(float(torch.stack(vals).mean()), 3)
    return out


GREY_BINS: tuple[tuple[int, int], ...] = ((90, 110), (110, 130), (130, 150), (150, 170))


def grey_levels(n: int, seed: int, tile: int = 28) -> list[list[int | None]]:
    """The grey level of every grey distractor of ``make_data(n, seed)``'s images (``None``: not grey),
    replaying the generator as :func:`task.tile_kinds` does."""
    import numpy as np

    from benchmarks.needle import task as needle

    out: list[list[int | None]] = []
    orig = needle._shape

    def record(draw, box, kind, **style):
        fill = style.get("fill")
        out[-1].append(fill[0] if fill is not None and len(set(fill)) == 1 else None)
        return orig(draw, box, kind, **style)

    rng = np.random.default_rng(seed)
    needle._shape = record
    try:
        for _ in range(n):
            out.append([])
            needle.make_image(rng, tile)
    finally:
        needle._shape = orig
    return out


def needle_to_grey(s: torch.Tensor, answer: torch.Tensor, needle_tile: torch.Tensor, greys: list[list[int | None]]) -> dict:
    """Mean distance between each colour's needle summary and the grey distractors of the same image,
    per grey level (:data:`GREY_BINS`; summaries ``[images, views, dim]``, LayerNorm'd): is a needle whose
    brightness lies among the greys' (green: luma 124) closer to greys of that brightness?"""
    from benchmarks.needle import task as needle

    names = needle.answer_words()[: len(needle.COLOURS)]
    out = {}
    for a, n in enumerate(names):
        by_bin: dict[str, list[float]] = {f"{lo}-{hi}": [] for lo, hi in GREY_BINS}
        for i in (answer == a).nonzero().flatten().tolist():
            k = int(needle_tile[i])
            for t, g in enumerate(greys[i]):
                for lo, hi in GREY_BINS:
                    if g is not None and lo <= g < hi:
                        by_bin[f"{lo}-{hi}"].append(float((s[i, k] - s[i, t]).norm()))
        out[n] = {b: round(sum(v) / len(v), 3) if v else None for b, v in by_bin.items()}
    return out


def _probes(model, data, ids) -> dict[str, float]:
    s = _summaries(model, data, ids)
    has = (data.needle >= 0).nonzero().flatten()
    y = data.answer[has]
    return {
        "needle_tile": round(probe(s[has, data.needle[has]], y), 3),
        "thumbnail": round(probe(s[has, -1], y), 3),
    }


def measure(seed: int, tag: str, train_data, eval_data, every: int = 25) -> dict:
    from benchmarks.needle import task as needle

    cfg = needle.RunConfig(seed=seed, eval_every=every, **CONFIGS[tag])
    built = {}
    orig = needle.build_model

    def build(c):
        m, h = orig(c)
        built["model"] = m
        return m, h

    init_model, _ = orig(cfg)
    ids = needle.prompt_ids(init_model, (cfg.tile // 14) ** 2 // 4)
    probes = {"init": _probes(init_model, eval_data, ids)}
    names = needle.answer_words()[: len(needle.COLOURS)]
    has = (eval_data.needle >= 0).nonzero().flatten()[:128]
    pv, ans, ndl = eval_data.pixel_values[has], eval_data.answer[has], eval_data.needle[has]
    all_kinds = needle.tile_kinds(len(eval_data), needle.data_seeds(seed)[1], cfg.tile)
    kinds = [all_kinds[int(i)] for i in has]
    sub = needle.NeedleData(pv, ans, ndl)
    s_init = _summaries(init_model, sub, ids)
    distinct = {"init": distinctiveness(s_init, kinds, ans, ndl)}
    all_greys = grey_levels(len(eval_data), needle.data_seeds(seed)[1], cfg.tile)
    to_grey = needle_to_grey(s_init, ans, ndl, [all_greys[int(i)] for i in has])
    curve = []
    steps: list[tuple[float, float]] = []  # (gradient RMS, update RMS) of GSWA's parameters, per training step
    before: dict[str, list[torch.Tensor]] = {}

    def _gswa_params() -> list[torch.Tensor]:
        return [p for p in built["model"].gswa.parameters() if p.requires_grad]

    def pre_step(opt, args, kwargs) -> None:
        ps = _gswa_params()
        if ps and ps[0].grad is not None:
            before["p"] = [p.detach().clone() for p in ps]
            before["g"] = torch.cat([p.grad.flatten() for p in ps if p.grad is not None])

    def post_step(opt, args, kwargs) -> None:
        if "p" in before:
            delta = torch.cat([(p.detach() - q).flatten() for p, q in zip(_gswa_params(), before.pop("p"))])
            g = before.pop("g")
            steps.append((float(g.pow(2).mean().sqrt()), float(delta.pow(2).mean().sqrt())))

    def progress(step: int, ev: dict) -> None:
        model = built["model"]
        model.train()
        cap = {}

        def keep(mod, args, out):
            out.retain_grad()
            cap["logits"] = out

        def keep_w(mod, args, out):
            out.retain_grad()
            cap["w"] = out

        hooks = [model.gswa.scorer.register_forward_hook(keep), model.gswa.register_forward_hook(keep_w)]
        logits = needle._forward(model, ids, pv)
        for h in hooks:
            h.remove()
        loss = torch.nn.functional.cross_entropy(logits[:, needle.answer_ids()], ans, reduction="sum")
        loss.backward()  # the training loop clears these gradients before its next step
        g = cap["logits"].grad.reshape(len(ans), -1).norm(dim=-1)
        # -dL/dw per tile (thumbnail last, left out): does its argmax point at the needle?
        benefit = -cap["w"].grad.reshape(len(ans), -1)[:, :-1]
        imp_hit = benefit.argmax(-1) == ndl
        pred = logits.detach()[:, needle.answer_ids()].argmax(-1)
        right = pred == ans
        words = needle.answer_words()
        w = torch.stack(__import__("gswa_plugin").api.last_weights(model)).detach()
        window = steps[-every:]
        dist = distinctiveness(_summaries(model, sub, ids), kinds, ans, ndl)
        model.train()  # _summaries evaluates; training goes on after this callback
        wn = w.gather(1, ndl[:, None]).squeeze(1)
        curve.append({
            "step": step,
            "hit": {k: round(v, 3) for k, v in ev["hit_by_answer"].items()},
            "needle_weight": {n: round(float(wn[ans == a].mean()), 3) for a, n in enumerate(names)},
            "grad_to_scorer": {n: float(f"{float(g[ans == a].mean()):.3g}") for a, n in enumerate(names)},
            "accuracy": {n: round(float(right[ans == a].float().mean()), 3) for a, n in enumerate(names)},
            "benefit_hit": {n: round(float(imp_hit[ans == a].float().mean()), 3) for a, n in enumerate(names)},
            "distinct": dist,
            "answered": {n: words[int(pred[ans == a].mode().values)] for a, n in enumerate(names)},
            "gswa_grad_rms": float(f"{sum(g for g, _ in window) / max(1, len(window)):.3g}"),
            "gswa_step_rms": float(f"{sum(u for _, u in window) / max(1, len(window)):.3g}"),
        })

    needle.build_model = build
    hooks = [register_optimizer_step_pre_hook(pre_step),
             register_optimizer_step_post_hook(post_step)]
    try:
        res = needle.train(cfg, train_data, eval_data, progress=progress, keep_model=True)
    finally:
        needle.build_model = orig
        for h in hooks:
            h.remove()
    probes["trained"] = _probes(res["model"], eval_data, ids)
    return {"seed": seed, "tag": tag, "config": CONFIGS[tag], "hit_rate": res["hit_rate"], "accuracy": res["accuracy"],
            "hit_by_answer": res["hit_by_answer"], "curve": curve, "probe": probes, "distinct_init": distinct["init"],
            "needle_to_grey_init": to_grey}


def markdown(runs: list[dict]) -> str:
    lines = ["# Needle benchmark: allocator dynamics per colour", "", "Written by `benchmarks/needle/dynamics.py`."]
    for r in runs:
        names = list(r["curve"][0]["hit"])
        lines += ["", f"## Seed {r['seed']}, {r['tag']} {r['config']}: hit {100 * r['hit_rate']:.1f} %, "
                  f"accuracy {100 * r['accuracy']:.1f} %", "",
                  "Linear probe of the needle colour (held-out half, chance about 25 %): "
                  + "; ".join(f"{when}: needle tile {100 * p['needle_tile']:.0f} %, thumbnail {100 * p['thumbnail']:.0f} %"
                              for when, p in r["probe"].items()), "",
                  "| step | hit % " + " ".join(f"{n[0]}" for n in names) + " | needle weight " + " ".join(n[0] for n in names)
                  + " | grad norm to scorer " + " ".join(n[0] for n in names)
                  + " | accuracy % " + " ".join(n[0] for n in names)
                  + " | argmax -dL/dw on needle % " + " ".join(n[0] for n in names) + " |", "|---|---|---|---|---|---|"]
        for c in r["curve"]:
            lines.append(f"| {c['step']} | " + " ".join(f"{100 * c['hit'][n]:.0f}" for n in names) + " | "
                         + " ".join(f"{c['needle_weight'][n]:.2f}" for n in names) + " | "
                         + " ".join(f"{c['grad_to_scorer'][n]:.2g}" for n in names) + " | "
                         + " ".join(f"{100 * c['accuracy'][n]:.0f}" if "accuracy" in c else "-" for n in names) + " | "
                         + " ".join(f"{100 * c['benefit_hit'][n]:.0f}" if "benefit_hit" in c else "-" for n in names) + " |")
        if "distinct" in r["curve"][0]:
            lines += ["", "What the scorer reads: mean distinctiveness `sum_c (LN(s_i) - mean LN(s))_c^2` of the needle "
                      "tiles per colour and of the grey / outline distractors; the share of images whose most distinct "
                      "tile is the needle, per colour; GSWA's gradient RMS and AdamW's step RMS (mean over the 25 "
                      "training steps before)."
                      + (" At initialisation: " + ", ".join(f"{k} {v}" for k, v in r["distinct_init"].items())
                         if "distinct_init" in r else ""), "",
                      "| step | distinct needle " + " ".join(n[0] for n in names) + " | grey | outline | most distinct = needle % "
                      + " ".join(n[0] for n in names) + " | GSWA grad RMS | GSWA step RMS | most frequent answer "
                      + " ".join(n[0] for n in names) + " |", "|---|---|---|---|---|---|---|---|"]
            for c in r["curve"]:
                d = c["distinct"]
                lines.append(f"| {c['step']} | " + " ".join(f"{d['needle ' + n]:.2f}" for n in names)
                             + f" | {d['grey']:.2f} | {d['outline']:.2f} | "
                             + " ".join(f"{100 * d['top ' + n]:.0f}" for n in names)
                             + f" | {c['gswa_grad_rms']:.2g} | {c['gswa_step_rms']:.2g} | "
                             + " ".join(c.get("answered", {}).get(n, "-") for n in names) + " |")
        if "needle_to_grey_init" in r:
            bins = list(next(iter(r["needle_to_grey_init"].values())))
            lines += ["", "At initialisation, mean distance (LayerNorm'd summaries) from the needle tile to the grey "
                      "distractors of the same image, by grey level:", "",
                      "| needle | " + " | ".join(f"grey {b}" for b in bins) + " |", "|---|" + "---|" * len(bins)]
            for n, row in r["needle_to_grey_init"].items():
                lines.append(f"| {n} | " + " | ".join("-" if row[b] is None else f"{row[b]:.2f}" for b in bins) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.needle import run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--tags", default="base,td")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--data", type=Path, default=HERE, help="folder holding (or receiving) run.py's data/ cache")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = []
    for seed in run.parse_seeds(args.seeds):
        path = run._make_data((run.data_path(args.data, seed, 1500, 256), seed, 1500, 256))
        train_data, eval_data = torch.load(path, weights_only=False)
        for tag in args.tags.split(","):
            r = measure(seed, tag, train_data, eval_data)
            print(f"seed {seed} {tag}: hit {r['hit_rate']:.3f} {r['hit_by_answer']} probe {r['probe']}", flush=True)
            runs.append(r)
    (args.out / "dynamics.json").write_text(json.dumps(runs, indent=1) + "\n")
    (args.out / "dynamics.md").write_text(markdown(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
