"""Answer accuracy under the token budget on the needle benchmark: ``python benchmarks/budget/quality.py``.

For every seed, one tiny native InternVL with GSWA is trained on the needle task
([`benchmarks.needle.task`](../needle/task.py): a 3x3 grid of tiles, one holds the coloured
shape whose colour is the answer) exactly as the needle benchmark trains it (``--mode``, default
``value``, ``self_attn``, 300 steps), without any budget. The same trained model is then
evaluated on the same held-out images uncompressed and under every budget method at every
``keep`` ([`gswa_plugin.set_budget`][gswa_plugin.set_budget]): ``gswa`` (the trained weights),
and the training-free ``uniform``, ``random`` and ``globalcom``.

Every seed is reported. Writes ``docs/assets/budget_quality.json``, ``budget_quality_table.md``
and ``budget_quality.png`` (accuracy against ``keep`` per method, mean over seeds with the
seeds' range).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import gswa_plugin
from benchmarks.budget import plot_against_keep
from benchmarks.needle import task

ASSETS = Path(__file__).resolve().parents[2] / "docs" / "assets"
METHODS = ("gswa", "uniform", "random", "globalcom")


def run_seed(seed: int, args: argparse.Namespace, train_data, eval_data) -> dict:
    cfg = task.RunConfig(mode=args.mode, variant="self_attn", seed=seed, steps=args.steps, eval_every=0, tile=args.tile)
    t0 = time.perf_counter()
    out = task.train(cfg, train_data, eval_data, keep_model=True)
    model, handle = out["model"], out["handle"]
    tpv = (args.tile // 14) ** 2 // 4
    ids = task.prompt_ids(model, tpv)
    row = {"seed": seed, "train_s": time.perf_counter() - t0, "hit_rate": out["hit_rate"]}
    row["uncompressed"] = task.evaluate(model, handle, eval_data, ids)["accuracy"]
    for in_tile in args.in_tile:
        for keep in args.keeps:
            for method in METHODS:
                if method == "random" and in_tile != args.in_tile[0]:
                    continue  # random ignores the in-tile score
                gswa_plugin.set_budget(model, {"keep": keep, "method": method, "in_tile": in_tile, "seed": seed})
                name = f"{method}@{keep}" + ("" if in_tile == args.in_tile[0] else f"/{in_tile}")
                row[name] = task.evaluate(model, handle, eval_data, ids)["accuracy"]
    for sharp in args.sharpness:  # a flatter GSWA allocation (weights to a power below 1)
        for keep in args.keeps:
            gswa_plugin.set_budget(model, {"keep": keep, "method": "gswa", "in_tile": args.in_tile[0], "sharpness": sharp})
            row[f"gswa@{keep}^{sharp}"] = task.evaluate(model, handle, eval_data, ids)["accuracy"]
    gswa_plugin.set_budget(model, None)
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--mode", default="value")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--tile", type=int, default=28)
    p.add_argument("--in-tile", nargs="+", default=["norm"], help="in-tile scores to compare (the first is the main table's)")
    p.add_argument("--name", default="budget_quality", help="file name stem of the outputs")
    p.add_argument("--sharpness", type=float, nargs="*", default=[0.5, 0.25],
                   help="extra gswa rows with the weights raised to these powers (a sweep, on the same held-out set)")
    p.add_argument("--train-images", type=int, default=600)
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--out", type=Path, default=ASSETS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    proc = task.processor(args.tile)
    train_data = task.make_data(args.train_images, seed=1000, tile=args.tile, proc=proc)
    eval_data = task.make_data(args.eval_images, seed=2000, tile=args.tile, proc=proc)
    rows = [run_seed(s, args, train_data, eval_data) for s in args.seeds]
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows}
    write(result, args.out)
    return result


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    s_name = result["settings"].get("name", "budget_quality")
    (out / f"{s_name}.json").write_text(json.dumps(result, indent=1))
    s, rows = result["settings"], result["rows"]
    cols = ["uncompressed"] + [f"{m}@{k}" for k in s["keeps"] for m in METHODS]
    lines = [
        f"Needle task, tiny native InternVL, GSWA `{s['mode']}`/`self_attn` trained {s['steps']} steps on "
        f"{s['train_images']} images ({s['tile']} px tiles), accuracy on {s['eval_images']} held-out images "
        f"(5 answers, chance 0.2), in-tile score `{s['in_tile'][0]}`.",
        "",
        "| budget | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | mean |",
        "|---|" + "---:|" * (len(rows) + 1),
    ]
    others = s["in_tile"][1:]
    extra = [f"{m}@{k}/{t}" for t in others for k in s["keeps"] for m in ("gswa", "uniform")]
    extra += [f"gswa@{k}^{p}" for p in s.get("sharpness", []) for k in s["keeps"]]
    for c in cols + extra:
        label = c if c == "uncompressed" else c.replace("@", " keep ").replace("/", ", in-tile ").replace("^", ", sharpness ")
        values = [r[c] for r in rows]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {statistics.mean(values):.3f} |")
    (out / f"{s_name}_table.md").write_text("\n".join(lines) + "\n")
    keeps = [1.0] + sorted(s["keeps"], reverse=True)

    def draw(ax) -> None:
        for m in METHODS:
            accs = [[r["uncompressed"] for r in rows]] + [[r[f"{m}@{k}"] for r in rows] for k in keeps[1:]]
            mean = [statistics.mean(a) for a in accs]
            spread = [[mu - min(a) for mu, a in zip(mean, accs)], [max(a) - mu for mu, a in zip(mean, accs)]]
            ax.errorbar(keeps, mean, yerr=spread, marker="o", capsize=3, label=m)

    plot_against_keep(out / f"{s_name}.png", "held-out accuracy", draw)


if __name__ == "__main__":
    main()
