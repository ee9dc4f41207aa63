"""The needle-tile benchmark: modes x variants x seeds, trainable and frozen vision encoder.

Trains the tiny native InternVL of :mod:`benchmarks.needle.task` once per cell on CPU and appends one
JSON line per run to ``results.jsonl`` (so an interrupted run keeps what it finished and a rerun
skips it). ``report.py`` turns the lines into the docs table and figures.

    python benchmarks/needle/run.py --jobs 2            # the full grid (what docs/needle.md shows)
    python benchmarks/needle/run.py --seeds 1 --steps 50 --out /tmp/needle   # a quick look
"""

from __future__ import annotations

import argparse
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


def cells(seeds: int, settings: list[str], variants: tuple[str, ...]) -> list[dict]:
    out = []  # seed by seed, so that an interrupted run still has every cell for the first seeds
    for seed in range(seeds):
        for setting in settings:
            out.append({"setting": setting, "mode": "none", "variant": "-", "seed": seed})
            for mode in ("embed", "value", "attn_bias"):
                for variant in variants:
                    out.append({"setting": setting, "mode": mode, "variant": variant, "seed": seed})
    return out


def key(cell: dict) -> str:
    return f"{cell['setting']}/{cell['mode']}/{cell['variant']}/{cell['seed']}"


_DATA = None


def _init(data_path: str) -> None:
    global _DATA
    torch.set_num_threads(1)  # runs go in parallel; one thread each is fastest on a shared CPU
    _DATA = torch.load(data_path, weights_only=False)


def _run(job: tuple[dict, dict]) -> dict:
    from benchmarks.needle import task as needle

    cell, overrides = job
    train_data, eval_data = _DATA
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
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: RunConfig's)")
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--settings", default="trainable,frozen", help="comma list of: trainable, frozen")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one CPU thread each)")
    args = ap.parse_args(argv)

    from benchmarks.needle import task as needle

    args.out.mkdir(parents=True, exist_ok=True)
    overrides = {} if args.steps is None else {"steps": args.steps}
    tile = needle.RunConfig().tile
    data_path = args.out / f"data-{args.train_images}-{args.eval_images}-{tile}px.pt"
    if not data_path.exists():
        t0 = time.perf_counter()
        proc = needle.processor(tile)
        train_data = needle.make_data(args.train_images, seed=1, tile=tile, proc=proc)
        eval_data = needle.make_data(args.eval_images, seed=2, tile=tile, proc=proc)
        torch.save((train_data, eval_data), data_path)
        print(f"made {args.train_images}+{args.eval_images} images in {time.perf_counter() - t0:.0f} s", flush=True)
    results_path = args.out / "results.jsonl"
    done = set()
    if results_path.exists():
        done = {json.loads(line)["key"] for line in results_path.read_text().splitlines() if line.strip()}
    todo = [c for c in cells(args.seeds, args.settings.split(","), tuple(args.variants.split(","))) if key(c) not in done]
    print(f"{len(todo)} runs to do ({len(done)} already in {results_path})", flush=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init, initargs=(str(data_path),)) as pool, results_path.open("a") as f:
        for res in tqdm(pool.imap_unordered(_run, [(c, overrides) for c in todo]), total=len(todo), file=sys.stdout):
            f.write(json.dumps(res) + "\n")
            f.flush()
            tqdm.write(
                f"{res['key']:<34} acc {res['accuracy']:.3f} hit {res['hit_rate'] if res['hit_rate'] is None else round(res['hit_rate'], 3)} "
                f"{res['wall_s']:.0f}s"
            )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
