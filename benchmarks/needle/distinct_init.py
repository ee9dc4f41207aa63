"""Hit rate of the untrained distinctiveness score (dev candidate ``deviation_scorer``) per seed.

At initialisation, the tile of largest ``||LN(s_i) - mean_j LN(s_j)||**2`` (``s``: the summaries
GSWA reads, from the run's initial host) is compared with the needle tile on the seed's held-out
images, per answer colour. Needs the seed's images under ``--out``'s ``data/`` (made by ``run.py``).

    python benchmarks/needle/distinct_init.py --seeds 1,3,7,8,12 --out /tmp/needle
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.needle import run
    from benchmarks.needle import task as needle

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1,3,7,8,12")
    ap.add_argument("--out", type=Path, default=run.HERE)
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--eval-images", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for seed in run.parse_seeds(args.seeds):
        _, ev = torch.load(run.data_path(args.out, seed, args.train_images, args.eval_images), weights_only=False)
        model, _ = needle.build_model(needle.RunConfig(seed=seed, **needle.RECOMMENDED))
        cap: dict[str, torch.Tensor] = {}
        model.gswa.register_forward_hook(lambda m, a, o: cap.__setitem__("s", a[0]))
        with torch.no_grad():
            needle._forward(model, needle.prompt_ids(model, 1), ev.pixel_values)
        views = ev.pixel_values.shape[1]
        s = cap["s"].view(len(ev), views, -1)[:, : views - 1].float()  # thumbnail last
        h = torch.nn.functional.layer_norm(s, s.shape[-1:])
        score = ((h - h.mean(1, keepdim=True)) ** 2).sum(-1)
        has = ev.needle >= 0
        hit = (score.argmax(-1) == ev.needle)[has].float()
        per = {c: round(100 * float(hit[ev.answer[has] == i].mean())) for i, c in enumerate(needle.COLOURS)}
        print(f"seed {seed}: hit {100 * float(hit.mean()):.1f} %", per)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
