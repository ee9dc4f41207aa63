"""The distinctiveness prior before any training: how often the most distinct tile is the needle.

For each seed, the untrained host of the recommended configuration reads the seed's held-out
images; each tile's distinctiveness (``gswa_plugin.weighting.tile_distinctiveness`` of the
summaries GSWA reads) ranks the tiles, and the hit rate of its argmax is reported, overall and per
answer colour. No parameter is trained: with the vision encoder frozen, the summaries, and so this
prior, stay the same through training. Output: one JSON line per seed (``prior_init_dev.jsonl``).

    python benchmarks/needle/prior_init.py --seeds dev,dev-extra --data /tmp/dev/data
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


def prior_at_init(seed: int, eval_data) -> dict:
    """The prior's hit rate (overall and per answer colour) on ``eval_data`` for run ``seed``'s untrained host."""
    from benchmarks.needle import task

    model, handle = task.build_model(task.RunConfig(mode="value", seed=seed, **task.RECOMMENDED))
    res = task.evaluate(model, handle, eval_data, task.prompt_ids(model, 1))
    return {"seed": seed, "prior_hit_rate_init": res["prior_hit_rate"], "prior_hit_by_answer_init": res["prior_hit_by_answer"]}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.needle import run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="dev,dev-extra")
    ap.add_argument("--data", type=Path, required=True, help="run.py's data folder (its images, made there)")
    ap.add_argument("--out", type=Path, default=HERE / "prior_init_dev.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with args.out.open("w") as f:
        for seed in run.parse_seeds(args.seeds):
            path = run._make_data((run.data_path(args.data.parent, seed, 1500, 256), seed, 1500, 256))
            res = prior_at_init(seed, torch.load(path, weights_only=False)[1])
            f.write(json.dumps(res) + "\n")
            print(seed, f"{100 * res['prior_hit_rate_init']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
