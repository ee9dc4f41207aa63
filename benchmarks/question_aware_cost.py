"""Extra time of the question-aware variant, side by side with ``self_attn`` in one run.

``gswa bench`` measures GSWA's share of the image encoding for a config, but its parameter table
looks variants up in the image-only registry, so it stops on ``variant: text_guided``. This
script measures what ``text_guided`` adds to ``self_attn`` at InternVL2-2B shapes (summaries of
width 1024, 12 tiles + thumbnail, the default GSWA size, text width 2048): the GSWA module's
forward for both variants, alternating, and the text pooling (one lookup of a 12-tile prompt in
a 92,553 x 2,048 embedding table, and the mean). Each repeat gives ratios; the median and
min-max are printed. Combine with ``gswa bench``'s GSWA / image-encoding ratio for self_attn.

    OMP_NUM_THREADS=1 python benchmarks/question_aware_cost.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def _time(fn, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def main(repeats: int = 5, inner: int = 20) -> None:
    from gswa_plugin.adapters._text import pooled_text
    from gswa_plugin.config import GSWAConfig
    from gswa_plugin.layout import TileLayout
    from gswa_plugin.weighting import BUILTIN_VARIANTS, TEXT_VARIANTS, GSWAModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    summary_dim, text_dim, vocab, views = 1024, 2048, 92553, 13
    mods = {}
    for name, make in (("self_attn", BUILTIN_VARIANTS["self_attn"]), ("text_guided", TEXT_VARIANTS["text_guided"])):
        cfg = GSWAConfig(variant=name, identity_init=False)
        extra = {"text_dim": text_dim} if name == "text_guided" else {}
        mods[name] = GSWAModule(summary_dim, cfg, make(summary_dim, cfg, **extra)).eval()
    layout = TileLayout((views,), "last")
    summaries = torch.randn(views, summary_dim)
    text = torch.randn(1, text_dim)

    class Host(nn.Module):  # only what pooled_text reads: the input table and the image token id
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, text_dim)
            self.config = type("C", (), {"image_token_id": 5})()

        def get_input_embeddings(self) -> nn.Module:
            return self.embed

    host = Host()
    ids = torch.randint(10, vocab, (1, 12 * 256 + 256 + 60))
    ids[0, 10 : 10 + views * 256] = 5
    rows = []
    with torch.no_grad():
        for _ in range(repeats):
            base = _time(lambda: mods["self_attn"](summaries, layout), inner)
            guided = _time(lambda: mods["text_guided"](summaries, layout, text=text), inner)
            pool = _time(lambda: pooled_text(host, ids), inner)
            rows.append((base, guided, pool))
    for label, f in (
        ("self_attn module forward", lambda r: r[0] * 1e3),
        ("text_guided module forward", lambda r: r[1] * 1e3),
        ("text pooling", lambda r: r[2] * 1e3),
    ):
        v = [f(r) for r in rows]
        print(f"{label:<28} median {statistics.median(v):.3f} ms [{min(v):.3f}-{max(v):.3f}]")
    ratio = [(r[1] + r[2]) / r[0] for r in rows]
    print(
        f"(text_guided + pooling) / self_attn: median {statistics.median(ratio):.2f} [{min(ratio):.2f}-{max(ratio):.2f}]"
        f" over {repeats} repeats"
    )


if __name__ == "__main__":
    main()
