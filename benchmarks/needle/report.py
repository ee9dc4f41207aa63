"""Turn ``results.jsonl`` of ``run.py`` into the docs table (markdown) and figures.

    python benchmarks/needle/report.py            # writes results.md here and PNGs to docs/assets/needle/
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODES = ("none", "embed", "value", "attn_bias")
SETTING_TITLES = {"trainable": "vision encoder trained", "frozen": "vision encoder frozen"}


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ms(xs: list[float], pct: bool = True) -> str:
    if not xs:
        return "-"
    k = 100.0 if pct else 1.0
    m = statistics.fmean(xs) * k
    s = (statistics.stdev(xs) * k) if len(xs) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}" if pct else f"{m:.2f} ± {s:.2f}"


def _group_key(r: dict) -> tuple:
    return (r.get("tag", "default"), r["setting"], r["mode"], r["variant"])


def _worst_colour(r: dict) -> float | None:
    by = [v for v in (r.get("hit_by_answer") or {}).values() if v == v]
    return min(by) if by else None


def _drop_first_column(md: str) -> str:
    return "\n".join("|" + line.split("|", 2)[2] if line.startswith("|") else line for line in md.splitlines())


def _one_tag(rows: list[dict]) -> bool:
    return len({r.get("tag", "default") for r in rows}) == 1


def table(rows: list[dict]) -> str:
    """Per configuration: mean ± sd between seeds, and the best, worst and mean seed."""
    md = _table(rows)
    return _drop_first_column(md) if _one_tag(rows) else md


def _table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[_group_key(r)].append(r)
    lines = []
    for setting in SETTING_TITLES:
        keys = [k for k in groups if k[1] == setting]
        if not keys:
            continue
        keys.sort(key=lambda k: (MODES.index(k[2]), k[3], k[0]))
        seeds = sorted({r["seed"] for k in keys for r in groups[k]})
        lines += [
            f"**{SETTING_TITLES[setting]}** ({len(seeds)} seeds: {', '.join(map(str, seeds))}; mean ± sd between seeds)",
            "",
            "| config | mode | variant | accuracy % | hit % (chance 11.1) | worst / best seed hit % "
            "| worst colour hit % | needle weight | s / run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k in keys:
            g = sorted(groups[k], key=lambda r: r["seed"])
            hits = [r["hit_rate"] for r in g if r["hit_rate"] is not None]
            nw = [r["needle_weight"] for r in g if r["needle_weight"] is not None]
            worst = [w for w in (_worst_colour(r) for r in g) if w is not None]
            span = f"{100 * min(hits):.1f} / {100 * max(hits):.1f}" if hits else "-"
            short = f" ({len(g)} seeds)" if len(g) < len(seeds) else ""
            lines.append(
                f"| {k[0]} | {k[2]}{short} | {k[3]} | {_ms([r['accuracy'] for r in g])} | {_ms(hits)} | {span} | "
                f"{f'{100 * min(worst):.0f}' if worst else '-'} | {_ms(nw, pct=False)} | "
                f"{statistics.fmean(r['wall_s'] for r in g):.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def per_seed(rows: list[dict]) -> str:
    """Every run: accuracy, hit rate, hit rate per answer colour and, where recorded, the hit rate of
    the parameter-free prior (the distinctiveness term's target)."""
    md = _per_seed(rows)
    if len({r["variant"] for r in rows}) == 1:  # one variant (named in the text): leave its column out
        md = "\n".join("|".join(c for i, c in enumerate(line.split("|")) if i != 4) for line in md.splitlines())
    return _drop_first_column(md) if _one_tag(rows) else md


def _per_seed(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda r: (r.get("tag", "default"), list(SETTING_TITLES).index(r["setting"]),
                                       MODES.index(r["mode"]), r["variant"], r["seed"]))
    colours = next((list(r["hit_by_answer"]) for r in rows if r.get("hit_by_answer")), [])
    # the parameter-free prior (argmax of each tile's distinctiveness in what GSWA read), where recorded
    prior = any(r.get("prior_hit_rate") is not None for r in rows)
    lines = [
        "| config | setting | mode | variant | seed | acc. % | hit % | " + " | ".join(colours) + " |"
        + (" prior hit % |" if prior else ""),
        "|---" * (7 + len(colours) + prior) + "|",
    ]
    for r in rows:
        by = r.get("hit_by_answer") or {}
        cols = [("-" if c not in by or by[c] != by[c] else f"{100 * by[c]:.0f}") for c in colours]
        if prior:
            cols.append("-" if r.get("prior_hit_rate") is None else f"{100 * r['prior_hit_rate']:.1f}")
        hit = "-" if r["hit_rate"] is None else f"{100 * r['hit_rate']:.1f}"
        lines.append(
            f"| {r.get('tag', 'default')} | {r['setting']} | {r['mode']} | {r['variant']} | {r['seed']} | "
            f"{100 * r['accuracy']:.1f} | {hit} | " + " | ".join(cols) + " |"
        )
    return "\n".join(lines)


def hit_curve(rows: list[dict], out: Path, variant: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in ("trainable", "frozen") if any(r["setting"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.6), squeeze=False, sharey=True)
    for ax, setting in zip(axes[0], settings):
        for mode, colour in zip(("embed", "value", "attn_bias"), ("tab:grey", "tab:blue", "tab:red")):
            runs = [r for r in rows if r["setting"] == setting and r["mode"] == mode and r["variant"] == variant]
            if not runs:
                continue
            steps = [h[0] for h in runs[0]["history"]]
            hits = torch.tensor([[h[2] for h in r["history"]] for r in runs]) * 100
            m = hits.mean(0)
            ax.plot(steps, m, label=mode, color=colour)
            if len(runs) > 1:
                ax.fill_between(steps, hits.min(0).values, hits.max(0).values, color=colour, alpha=0.15)
        ax.axhline(100 / 9, ls=":", color="k", lw=1, label="chance")
        ax.set_title(f"{SETTING_TITLES[setting]}, {variant}")
        ax.set_xlabel("training step")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("hit rate on held-out images (%)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def weight_maps(rows: list[dict], data_dir: Path, out: Path, setting: str, variant: str, n: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    seed = min(r["seed"] for r in rows if r["setting"] == setting)
    files = sorted(data_dir.glob(f"seed-{seed}-*.pt"))
    if not files:
        return
    _, eval_data = torch.load(files[0], weights_only=False)
    modes = [m for m in ("embed", "value", "attn_bias") if any(
        r["mode"] == m and r["setting"] == setting and r["variant"] == variant and r["seed"] == seed for r in rows)]
    fig, axes = plt.subplots(len(modes), n, figsize=(2.3 * n, 2.5 * len(modes)), squeeze=False)
    for i, mode in enumerate(modes):
        run = next(r for r in rows if r["mode"] == mode and r["setting"] == setting and r["variant"] == variant and r["seed"] == seed)
        for j in range(n):
            ax = axes[i][j]
            img = eval_data.images[j]
            w = torch.tensor(run["first_weights"][j]).view(3, 3)
            side = img.size[0]
            t = side / 3
            ax.imshow(img, extent=(0, side, side, 0))
            ax.imshow(w.numpy(), extent=(0, side, side, 0), cmap="magma", alpha=0.45, vmin=0, vmax=max(3.0, float(w.max())))
            needle = int(eval_data.needle[j])
            r_, c_ = divmod(needle, 3)
            ax.add_patch(Rectangle((c_ * t, r_ * t), t, t, fill=False, ec="lime", lw=2))
            for k in range(9):
                rr, cc = divmod(k, 3)
                ax.text(cc * t + t / 2, rr * t + t * 0.85, f"{float(w.view(-1)[k]):.1f}", ha="center", va="center",
                        fontsize=7, color="white", fontweight="bold")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(mode, fontsize=11)
    fig.suptitle(f"GSWA tile weights on held-out images ({SETTING_TITLES[setting]}, {variant}, seed {seed}; green: needle tile)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    ap.add_argument("--assets", type=Path, default=ROOT / "docs" / "assets" / "needle")
    ap.add_argument("--variant", default="self_attn", help="variant shown in the figures")
    ap.add_argument("--tag", default=None, help="only this configuration tag (default: all)")
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args(argv)
    rows = load(args.results)
    if args.tag is not None:
        rows = [r for r in rows if r.get("tag", "default") == args.tag]
    args.assets.mkdir(parents=True, exist_ok=True)
    md = table(rows).rstrip("\n") + "\n\n**Every run** (hit rate per answer colour, %)\n\n" + per_seed(rows)
    if args.no_figures:
        print(md)
        return 0
    (args.results.parent / "results.md").write_text(md + "\n")
    print(md)
    hit_curve(rows, args.assets / "hit_rate.png", args.variant)
    for setting in ("trainable", "frozen"):
        if any(r["setting"] == setting for r in rows):
            weight_maps(rows, args.results.parent / "data", args.assets / f"weight_maps_{setting}.png", setting, args.variant)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
