"""The needle-tile benchmark runner: any cells on any seeds, one JSON line per run.

Trains the tiny native InternVL of :mod:`benchmarks.needle.task` once per (cell, seed) on CPU and
appends one JSON line per run to ``results.jsonl`` (an interrupted run keeps what it finished; a
rerun skips what is there). Every seed draws its own training and held-out images
(``task.data_seeds``), cached as ``data/seed-<seed>-<train>-<eval>.pt`` under ``--out``.
``report.py`` turns the lines into the docs table.

A cell is ``setting/mode/variant`` (``trainable/value/self_attn``, ``frozen/none/-``); ``--set``
changes ``RunConfig`` fields for every cell of the call, and ``--tag`` names that configuration in
the results (a run's key is ``tag/setting/mode/variant/seed``).

    python benchmarks/needle/run.py --seeds heldout-stop24 --cells final --recommended --tag final --jobs 2  # docs table
    python benchmarks/needle/run.py --seeds 0,1 --cells trainable/value/self_attn --steps 100 --out /tmp/n
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

# Run as a script from a checkout: the repository root makes `benchmarks.needle.task` importable.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

HERE = Path(__file__).resolve().parent
VARIANTS = ("self_attn", "cross_attn", "cosine")
SETTINGS = ("trainable", "frozen")
MODES = ("none", "embed", "value", "attn_bias")


def grid(settings=SETTINGS, variants=VARIANTS) -> list[str]:
    """Every cell of the full grid: per setting, the host without GSWA and each mode x variant."""
    out = []
    for setting in settings:
        out.append(f"{setting}/none/-")
        out += [f"{setting}/{m}/{v}" for m in MODES[1:] for v in variants]
    return out


#: Named cell lists for ``--cells``. ``final``: the docs table (recommended configuration beside
#: ``embed`` and the host without GSWA, vision encoder trained and frozen).
NAMED_CELLS: dict[str, list[str]] = {
    "grid": grid(),
    "final": [
        "trainable/none/-", "trainable/value/self_attn", "trainable/embed/self_attn",
        "frozen/none/-", "frozen/value/self_attn", "frozen/embed/self_attn",
    ],
}


def parse_seeds(text: str) -> list[int]:
    """``dev``, ``dev-extra``, ``heldout``, ``heldout-stop24``, ``heldout3`` (``task.DEV_SEEDS`` /
    ``DEV_SEEDS_EXTRA`` / ``HELDOUT_SEEDS`` (the second draw, used) / ``HELDOUT_SEEDS_STOP24`` (the first,
    used) / ``HELDOUT_SEEDS_3`` (the third)) or a comma list of integers."""
    from benchmarks.needle import task as needle

    named = {
        "dev": list(needle.DEV_SEEDS),
        "heldout": list(needle.HELDOUT_SEEDS),
        "heldout-stop24": list(needle.HELDOUT_SEEDS_STOP24),
        "heldout3": list(needle.HELDOUT_SEEDS_3),
        "dev-extra": list(needle.DEV_SEEDS_EXTRA),
    }
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in named:
            out += named[part]
        elif part.lstrip("-").isdigit() and int(part) >= 0:
            out.append(int(part))
        else:
            raise SystemExit(f"--seeds: {part!r} is not a seed; give a comma list of integers >= 0, 'dev', "
                "'dev-extra', 'heldout', 'heldout-stop24' or 'heldout3'")
    return out


def parse_cells(text: str) -> list[dict]:
    """A named list (``grid``, ``final``) or a comma list of ``setting/mode/variant``."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in NAMED_CELLS:
            out += parse_cells(",".join(NAMED_CELLS[part]))
            continue
        bits = part.split("/")
        if len(bits) != 3 or bits[0] not in SETTINGS or bits[1] not in MODES:
            raise SystemExit(
                f"--cells: {part!r} is not setting/mode/variant (setting one of {SETTINGS}, mode one of {MODES}, "
                f"variant e.g. self_attn, '-' for mode none), nor one of {sorted(NAMED_CELLS)}"
            )
        out.append({"setting": bits[0], "mode": bits[1], "variant": "-" if bits[1] == "none" else bits[2]})
    return out


def parse_set(items: list[str]) -> dict:
    """``key=value`` pairs for ``RunConfig`` fields, each value converted to the field's type."""
    from benchmarks.needle import task as needle

    fields = {f.name: f for f in dataclasses.fields(needle.RunConfig)}
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        if k not in fields or k in ("mode", "variant", "seed", "frozen_encoder"):
            raise SystemExit(f"--set: {k!r} is not a RunConfig field one can set here; fields: {sorted(fields)}")
        default = fields[k].default
        if isinstance(default, bool):
            out[k] = v.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            out[k] = type(default)(float(v)) if isinstance(default, float) else int(v)
        elif default is None:
            out[k] = None if v.lower() == "none" else float(v)
        else:
            out[k] = v
    return out


def key(cell: dict) -> str:
    return f"{cell['tag']}/{cell['setting']}/{cell['mode']}/{cell['variant']}/{cell['seed']}"


def data_path(out: Path, seed: int, n_train: int, n_eval: int) -> Path:
    return out / "data" / f"seed-{seed}-{n_train}-{n_eval}.pt"


def _make_data(job: tuple[Path, int, int, int]) -> Path:
    from benchmarks.needle import task as needle

    torch.set_num_threads(1)
    path, seed, n_train, n_eval = job
    if not path.exists():
        proc = needle.processor(needle.RunConfig().tile)
        s_train, s_eval = needle.data_seeds(seed)
        data = (needle.make_data(n_train, seed=s_train, proc=proc), needle.make_data(n_eval, seed=s_eval, proc=proc))
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.replace(path)
    return path


_DATA: dict[str, tuple] = {}


def _init() -> None:
    torch.set_num_threads(1)  # runs go in parallel; one thread each is fastest on a shared CPU


def _run(job: tuple[dict, dict, str]) -> dict:
    from benchmarks.needle import task as needle

    cell, overrides, path = job
    if path not in _DATA:
        _DATA.clear()
        _DATA[path] = torch.load(path, weights_only=False)
    train_data, eval_data = _DATA[path]
    cfg = needle.RunConfig(
        mode=cell["mode"],
        variant=cell["variant"] if cell["variant"] != "-" else "self_attn",
        seed=cell["seed"],
        frozen_encoder=cell["setting"] == "frozen",
        **overrides,
    )
    res = needle.train(cfg, train_data, eval_data)
    w = res.pop("weights")
    res["first_weights"] = None if w is None else w[:8].tolist()
    res.update(cell)
    res["key"] = key(cell)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE, help="folder for results.jsonl and data (default: here)")
    ap.add_argument("--seeds", default="heldout", help="comma list of seeds, 'dev', 'dev-extra', 'heldout' (default), 'heldout-stop24', 'heldout3'")
    ap.add_argument("--cells", default="final", help="comma list of setting/mode/variant, or 'final' (default), 'grid'")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: RunConfig's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a RunConfig field for every run")
    ap.add_argument("--tag", default="default", help="name of this configuration in the results")
    ap.add_argument("--recommended", action="store_true", help="apply task.RECOMMENDED to the `value` cells")
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one CPU thread each)")
    args = ap.parse_args(argv)

    from benchmarks.needle import task as needle

    seeds, cells = parse_seeds(args.seeds), parse_cells(args.cells)
    overrides = parse_set(args.set)
    if args.steps is not None:
        overrides["steps"] = args.steps
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data").mkdir(exist_ok=True)
    results_path = args.out / "results.jsonl"
    done = set()
    if results_path.exists():
        done = {json.loads(line)["key"] for line in results_path.read_text().splitlines() if line.strip()}
    todo = []  # seed by seed, so that an interrupted run still has every cell for the first seeds
    for seed in seeds:
        for cell in cells:
            c = {**cell, "seed": seed, "tag": args.tag}
            if key(c) in done:
                continue
            extra = dict(needle.RECOMMENDED) if args.recommended and c["mode"] == "value" else {}
            todo.append((c, {**extra, **overrides}, str(data_path(args.out, seed, args.train_images, args.eval_images))))
    print(f"{len(todo)} runs to do ({len(done)} already in {results_path})", flush=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init) as pool, results_path.open("a") as f:
        t0 = time.perf_counter()
        need = sorted({(Path(p), c["seed"]) for c, _, p in todo if not Path(p).exists()}, key=lambda x: x[1])
        pool.map(_make_data, [(p, s, args.train_images, args.eval_images) for p, s in need])
        if need:
            print(f"made the images of {len(need)} seeds in {time.perf_counter() - t0:.0f} s", flush=True)
        for res in tqdm(pool.imap(_run, todo), total=len(todo), file=sys.stdout):
            f.write(json.dumps(res) + "\n")
            f.flush()
            hit = res["hit_rate"]
            by = res.get("hit_by_answer") or {}
            tqdm.write(
                f"{res['key']:<44} acc {res['accuracy']:.3f} hit {'-' if hit is None else round(hit, 3)} "
                + " ".join(f"{k[0]}{100 * v:.0f}" for k, v in by.items()) + f" {res['wall_s']:.0f}s"
            )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
