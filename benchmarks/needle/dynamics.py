"""Why the allocator locks onto a colour direction: per-colour measurements over training.

For each run (a dev seed and a configuration), every 25 steps on the seed's held-out images:

- the hit rate and the mean needle-tile weight per answer colour;
- the gradient of the answer loss reaching GSWA's scorer, per colour: the norm of
  ``d loss / d logits`` over the tiles of each image (the loss summed over images, so the
  numbers are per image), averaged over the images whose needle has that colour;

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

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

HERE = Path(__file__).resolve().parent
#: Configurations compared (``RunConfig`` overrides on top of the defaults). ``rec``: the configuration
#: recommended before the third attempt (CLS summaries); ``imp1``: it plus the importance term;
#: ``smean``: the recommended configuration since the third attempt (mean-token summaries).
CONFIGS: dict[str, dict] = {
    "base": {},
    "td": {"tile_dropout": 1.0},
    "rec": {"score_input": "squared_deviation", "gswa_lr": 3e-3},
    "imp1": {"score_input": "squared_deviation", "gswa_lr": 3e-3, "importance_weight": 1.0},
    "smean": {"score_input": "squared_deviation", "gswa_lr": 3e-3, "summary": "mean"},
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
    curve = []

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
        right = logits.detach()[:, needle.answer_ids()].argmax(-1) == ans
        w = torch.stack(__import__("gswa_plugin").api.last_weights(model)).detach()
        wn = w.gather(1, ndl[:, None]).squeeze(1)
        curve.append({
            "step": step,
            "hit": {k: round(v, 3) for k, v in ev["hit_by_answer"].items()},
            "needle_weight": {n: round(float(wn[ans == a].mean()), 3) for a, n in enumerate(names)},
            "grad_to_scorer": {n: float(f"{float(g[ans == a].mean()):.3g}") for a, n in enumerate(names)},
            "accuracy": {n: round(float(right[ans == a].float().mean()), 3) for a, n in enumerate(names)},
            "benefit_hit": {n: round(float(imp_hit[ans == a].float().mean()), 3) for a, n in enumerate(names)},
        })

    needle.build_model = build
    try:
        res = needle.train(cfg, train_data, eval_data, progress=progress, keep_model=True)
    finally:
        needle.build_model = orig
    probes["trained"] = _probes(res["model"], eval_data, ids)
    return {"seed": seed, "tag": tag, "config": CONFIGS[tag], "hit_rate": res["hit_rate"], "accuracy": res["accuracy"],
            "hit_by_answer": res["hit_by_answer"], "curve": curve, "probe": probes}


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
