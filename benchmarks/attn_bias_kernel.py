"""One attention call of ``attn_bias``'s prefill on a CPU, against the host's, per head size.

At a Qwen2-0.5B layer's attention shapes (InternVL2-1B: 14 query heads, 2 key/value heads, head
size 64, 835 tokens = 2 + 1 tiles, causal, one thread), all cases interleaved (shuffled in every
repeat), CPU time of the calling thread (``time.thread_time``: what other processes on a shared
machine take is not counted, cache and memory contention still is), median and minimum:

- ``host``: transformers' ``sdpa`` attention function on the host's tensors, then the attention
  module's reshape;
- ``kernel D``: ``scaled_dot_product_attention`` alone on inputs zero-padded to head size ``D``
  (what the wider head costs the kernel, without the copies that build it);
- ``extra dims D``: ``attn_bias``'s extra-dimension path (``apply.biased_attention``) with head
  size ``D`` (copies + kernel + slice; the extra dimensions themselves built once, as for the
  layers of one language-model call), ``D`` = 72 (the multiple of 8 a GPU needs) and the size
  ``_bias_head_dim`` picks on a CPU;
- ``row mask``: the CPU prefill path (``apply._causal_row_bias``): the host's head size, ``log(w)``
  as a ``[batch, 1, 1, keys]`` mask with ``is_causal``.

Error: the largest absolute difference from a float64 reference with the bias in a dense mask
(for ``host``: from the float64 host without bias).

    python benchmarks/attn_bias_kernel.py            # 21 repeats, bfloat16 and float32
    python benchmarks/attn_bias_kernel.py --repeats 5 --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

KERNEL_DIMS = (64, 65, 66, 68, 72, 80, 96)


def cases(dtype: torch.dtype, seq: int = 835, heads: int = 14, kv_heads: int = 2, d: int = 64, seed: int = 0) -> dict:
    """``{(what, head size): (call, error)}`` for one dtype."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from gswa_plugin import apply

    g = torch.Generator().manual_seed(seed)
    b, scale = 1, d**-0.5
    q = torch.randn(b, seq, heads * d, generator=g).to(dtype).view(b, seq, heads, d).transpose(1, 2)
    k, v = (torch.randn(b, seq, kv_heads * d, generator=g).to(dtype).view(b, seq, kv_heads, d).transpose(1, 2) for _ in "kv")
    w = torch.rand(b, seq, generator=g) * 3 + 0.05
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv_heads, True
    rep = heads // kv_heads
    k64, v64 = (t.double().repeat_interleave(rep, 1) for t in (k, v))
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    dense = torch.where(causal, torch.log(w).double()[:, None, None, :], float("-inf"))

    def reference(mask):
        kw = {"attn_mask": mask} if mask is not None else {"is_causal": True}
        out = F.scaled_dot_product_attention(q.double(), k64, v64, scale=scale, **kw)
        return out.transpose(1, 2).reshape(b, seq, -1)

    biased, plain = reference(dense), reference(None)
    out: dict = {}

    def host():
        return sdpa_attention_forward(module, q, k, v, None, scaling=scale)[0].reshape(b, seq, -1)

    out[("host", d)] = (host, (host().double() - plain).abs().max().item())
    for dim in KERNEL_DIMS:
        qq, kk, vv = (F.pad(t, (0, dim - d)) for t in (q, k, v))
        out[("kernel", dim)] = (
            lambda qq=qq, kk=kk, vv=vv: F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=scale, enable_gqa=True),
            float("nan"),
        )
    for dim in sorted({72, apply._bias_head_dim(d, dtype, "cpu")}):

        def extra(dim=dim, built={}):  # noqa: B006 - the extra dimensions, built once as for a call's layers
            with mock.patch.object(apply, "_bias_head_dim", lambda *a, **k: dim):
                o, _ = apply.biased_attention(
                    sdpa_attention_forward, module, q, k, v, None, torch.log(w), scaling=scale, cache=built
                )
            return o.reshape(b, seq, -1)

        out[("extra dims", dim)] = (extra, (extra().double() - biased).abs().max().item())

    def row():
        o, _ = apply._causal_row_bias(q, k, v, apply._KeyBias(w), {"scaling": scale})
        return o.reshape(b, seq, -1)

    if apply._CPU_FLASH is not None:
        out[("row mask", d)] = (row, (row().double() - biased).abs().max().item())
    return out


def main(argv: list[str] | None = None) -> list[tuple]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--seq", type=int, default=835)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    table = {}
    with torch.no_grad():
        for name in args.dtypes.split(","):
            for (what, dim), case in cases(getattr(torch, name), seq=args.seq).items():
                table[(name, what, dim)] = case
        times = {key: [] for key in table}
        keys = list(table)
        for fn, _ in table.values():
            fn()
        for r in range(args.repeats):
            random.Random(r).shuffle(keys)
            for key in keys:
                t = time.thread_time()
                table[key][0]()
                times[key].append(time.thread_time() - t)
    rows = []
    print(f"{args.repeats} repeats, sequence {args.seq}, thread CPU time")
    print("| dtype | what | head size | median ms | min ms | median / host | error |")
    print("|---|---|---|---|---|---|---|")
    order = {"host": 0, "kernel": 1, "extra dims": 2, "row mask": 3}
    for key in sorted(times, key=lambda k: (k[0], order[k[1]], k[2])):
        name, what, dim = key
        med, low = statistics.median(times[key]) * 1e3, min(times[key]) * 1e3
        ratio = med / (statistics.median(times[(name, "host", 64)]) * 1e3)
        err = table[key][1]
        rows.append((name, what, dim, med, low, ratio, err))
        print(f"| {name} | {what} | {dim} | {med:.2f} | {low:.2f} | {ratio:.3f} | {'-' if math.isnan(err) else f'{err:.1e}'} |")
    return rows


if __name__ == "__main__":
    main()
