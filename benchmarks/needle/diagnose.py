"""Why does the best configuration miss the blue needles in some seeds? Measurements per colour.

Written under the benchmark's earlier protocol (every seed on the same images, seeds 0-2, the then
best configuration: ``value`` + ``self_attn``, GSWA learning rate 1e-2); ``diagnosis.md`` is that
run's output. ``needle.BEST`` now holds the recommended configuration, so a rerun measures that
one. The current protocol's diagnosis is ``dynamics.py``.

Trains the benchmark's best configuration (``needle.BEST``: ``value``, ``self_attn``, vision
encoder trained) on the benchmark's data (``run.py``'s 1500 + 256 images) for each seed and writes
``diagnosis.json`` and ``diagnosis.md`` here:

- the palette's chroma as the encoder receives it (ImageNet normalisation) and each colour's
  cosine to the palette's mean chroma;
- the hit rate per answer colour during training (every 25 steps);
- after training, the mean GSWA weight per tile kind (needle of each colour, grey, outline);
- the distance of each colour's needle-tile summary (LayerNorm'd CLS, what GSWA reads) from the
  distractor tiles' mean summary, at initialisation and after training;
- the accuracy per answer when the thumbnail, or the needle tile, is replaced by the same view of
  an image without a needle (which view the language model reads the answer from).

    python benchmarks/needle/diagnose.py            # 3 seeds, about 1 min of CPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# Run as a script from a checkout: the repository root makes `benchmarks.needle.task` importable.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

HERE = Path(__file__).resolve().parent


def _summaries(model, data, ids) -> torch.Tensor:
    """LayerNorm'd per-view summaries GSWA receives, ``[images, 10, dim]``."""
    from benchmarks.needle import task as needle
    from gswa_plugin import weighting

    gswa = next(m for m in model.modules() if isinstance(m, weighting.GSWAModule))
    cap = {}
    hook = gswa.register_forward_pre_hook(lambda mod, args: cap.__setitem__("s", args[0].detach()))
    with torch.no_grad():
        needle._forward(model, ids, data.pixel_values)
    hook.remove()
    s = cap["s"].view(len(data), data.pixel_values.shape[1], -1)
    return torch.nn.functional.layer_norm(s, s.shape[-1:])


def _by_kind(values: torch.Tensor, data, kinds) -> dict[str, list[float]]:
    from benchmarks.needle import task as needle

    names = needle.answer_words()
    out: dict[str, list] = {}
    for i, row in enumerate(kinds):
        for t, kind in enumerate(row):
            k = f"needle {names[int(data.answer[i])]}" if kind == "needle" else kind
            out.setdefault(k, []).append(values[i, t])
    return out


def _needle_distance(s: torch.Tensor, data, kinds) -> dict[str, float]:
    groups = _by_kind(s, data, kinds)
    centre = torch.stack(groups["grey"] + groups["outline"]).mean(0)
    return {k: round(float((torch.stack(v) - centre).norm(dim=-1).mean()), 3) for k, v in sorted(groups.items())}


def _accuracy_by_answer(model, ids, pixel_values, answer) -> dict[str, float]:
    from benchmarks.needle import task as needle

    names = needle.answer_words()
    with torch.no_grad():
        pred = needle._forward(model, ids, pixel_values)[:, needle.answer_ids()].argmax(-1)
    return {names[a]: round(float((pred[answer == a] == a).float().mean()), 3) for a in range(len(names))}


def diagnose(seed: int, train_data, eval_data, kinds) -> dict:
    from benchmarks.needle import task as needle

    cfg = needle.RunConfig(**{**needle.BEST["config"], "seed": seed, "eval_every": 25})
    init_model, _ = needle.build_model(cfg)
    ids = needle.prompt_ids(init_model, (cfg.tile // 14) ** 2 // 4)
    dist_init = _needle_distance(_summaries(init_model, eval_data, ids), eval_data, kinds)
    curve = []
    res = needle.train(
        cfg, train_data, eval_data, keep_model=True,
        progress=lambda step, ev: curve.append([step, {k: round(v, 3) for k, v in ev["hit_by_answer"].items()}]),
    )
    model = res["model"].eval()
    w = res["weights"]
    weight_by_kind = {k: round(float(torch.stack(v).mean()), 3) for k, v in sorted(_by_kind(w, eval_data, kinds).items())}
    names = needle.answer_words()
    top: dict[str, dict[str, int]] = {}
    for i in (eval_data.needle >= 0).nonzero().flatten().tolist():
        kind = kinds[i][int(w[i].argmax())]
        by = top.setdefault(names[int(eval_data.answer[i])], {})
        by[kind] = by.get(kind, 0) + 1
    dist_trained = _needle_distance(_summaries(model, eval_data, ids), eval_data, kinds)
    pv = eval_data.pixel_values
    blank = int((eval_data.needle < 0).nonzero()[0])  # an image without a needle
    no_thumb = pv.clone()
    no_thumb[:, -1] = pv[blank, -1]
    no_needle = pv.clone()
    has = (eval_data.needle >= 0).nonzero().flatten()
    no_needle[has, eval_data.needle[has]] = pv[blank, 0]
    return {
        "seed": seed,
        "hit_rate": res["hit_rate"],
        "accuracy": res["accuracy"],
        "hit_by_answer": {k: round(v, 3) for k, v in needle.hit_rate_by_answer(w, eval_data).items()},
        "hit_by_answer_curve": curve,
        "mean_weight_by_tile_kind": weight_by_kind,
        "largest_weight_on_kind_by_answer": {k: top[k] for k in names if k in top},
        "summary_distance_from_distractors": {"init": dist_init, "trained": dist_trained},
        "accuracy_by_answer": {
            "as_is": _accuracy_by_answer(model, ids, pv, eval_data.answer),
            "thumbnail_replaced": _accuracy_by_answer(model, ids, no_thumb, eval_data.answer),
            "needle_tile_replaced": _accuracy_by_answer(model, ids, no_needle, eval_data.answer),
        },
    }


def markdown(out: dict) -> str:
    lines = ["# Needle benchmark: per-colour diagnosis of the best configuration", "",
             "Written by `benchmarks/needle/diagnose.py`.", "",
             "## Palette chroma (ImageNet-normalised; grey has none)", "",
             "| colour | chroma (R, G, B) | cosine to the palette's mean chroma |", "|---|---|---|"]
    for name, c in out["palette"].items():
        lines.append(f"| {name} | {tuple(c['chroma'])} | {c['cos_to_palette_mean']:+.2f} |")
    lines += ["", "Without the normalisation (raw RGB in [0, 1]), cosine to the palette's mean chroma: " + ", ".join(
        f"{name} {c['cos_to_palette_mean']:+.2f}" for name, c in out["palette_raw_rgb"].items())]
    for run in out["runs"]:
        names = list(run["hit_by_answer"])
        lines += ["", f"## Seed {run['seed']}: hit rate {100 * run['hit_rate']:.1f} %, accuracy {100 * run['accuracy']:.1f} %", "",
                  "Hit rate per colour during training (%):", "",
                  "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for step, h in run["hit_by_answer_curve"]:
            lines.append(f"| {step} | " + " | ".join(f"{100 * h[n]:.0f}" for n in names) + " |")
        lines += ["", "| tile kind | mean GSWA weight (1 = uniform) | summary distance from distractors: init | trained |",
                  "|---|---|---|---|"]
        d = run["summary_distance_from_distractors"]
        for kind, wk in run["mean_weight_by_tile_kind"].items():
            lines.append(f"| {kind} | {wk:.2f} | {d['init'][kind]:.2f} | {d['trained'][kind]:.2f} |")
        lines += ["", "Tile holding the largest weight, per answer colour (images): " + "; ".join(
            f"{k}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(v.items())) for k, v in run["largest_weight_on_kind_by_answer"].items()
        )]
        acc = run["accuracy_by_answer"]
        lines += ["", "| accuracy per answer (%) | " + " | ".join(acc["as_is"]) + " |", "|---" * (len(acc["as_is"]) + 1) + "|"]
        for label, a in acc.items():
            lines.append(f"| {label.replace('_', ' ')} | " + " | ".join(f"{100 * v:.0f}" for v in a.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--data", type=Path, default=HERE / "data-1500-256-28px.pt", help="run.py's data file (made if missing)")
    args = ap.parse_args(argv)

    from benchmarks.needle import task as needle

    torch.set_num_threads(1)
    if args.data.exists():
        train_data, eval_data = torch.load(args.data, weights_only=False)
    else:
        proc = needle.processor(28)
        train_data = needle.make_data(1500, seed=1, proc=proc)
        eval_data = needle.make_data(256, seed=2, proc=proc)
    kinds = needle.tile_kinds(len(eval_data), seed=2)
    out = {"palette": needle.palette_chroma(), "palette_raw_rgb": needle.palette_chroma((0, 0, 0), (1, 1, 1)), "runs": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        run = diagnose(seed, train_data, eval_data, kinds)
        print(f"seed {seed}: hit {run['hit_rate']:.3f} per colour {run['hit_by_answer']}", flush=True)
        out["runs"].append(run)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "diagnosis.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / "diagnosis.md").write_text(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
