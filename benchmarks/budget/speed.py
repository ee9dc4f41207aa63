"""Prefill and decode speed of the token budget, side by side in one run: ``python benchmarks/budget/speed.py``.

Host: ``InternVLForConditionalGeneration`` with random weights at InternVL2-2B language-model
shapes (InternLM2-1.8B as the Llama-shaped model transformers converts it to: hidden 2048,
16 heads, 8 KV heads, MLP 8192, vocabulary 92553) but only ``--text-layers`` of its 24 decoder
layers (default 1), and a tiny vision tower (the budget does not change the vision side; its cost
is the same at every ``keep``). One image of 12 tiles + thumbnail (13 x 256 = 3,328 visual
tokens) and a 32-token prompt, as InternVL's processor lays it out.

Every repeat runs every ``keep`` in turn (interleaved), each time one ``model.generate`` call of
``1 + n`` tokens, end to end: prefill = from the call of ``generate`` to the start of the language
model's second call (vision, GSWA, selection, shortening, the language model's prefill, the
first token), decode = the median time between the starts of the later language-model calls.
Peak memory: bytes of live tensors allocated during ``generate(max_new_tokens=1)``
([`PeakMemory`][gswa_plugin.tools.bench.PeakMemory], parameters and inputs excluded), in a
separate untimed pass.

Writes ``docs/assets/budget_speed.json``, ``budget_speed_table.md`` and ``budget_speed.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

import gswa_plugin
from benchmarks.budget import plot_against_keep
from gswa_plugin.tools.bench import SHAPES, PeakMemory, _make_inputs, host_config

ASSETS = Path(__file__).resolve().parents[2] / "docs" / "assets"
KEEPS = (1.0, 0.5, 0.25, 0.1)


def build(text_layers: int, seed: int = 0, shapes_name: str = "internvl2-2b"):
    from transformers import InternVLForConditionalGeneration

    shapes = replace(SHAPES[shapes_name], vision_hidden=32, vision_heads=2, vision_intermediate=64)
    cfg = host_config(shapes, vision_layers=1, text_layers=text_layers)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model, shapes


def gswa_config(keep: float) -> dict:
    cfg = {"hidden_size": 256, "num_heads": 4}
    if keep < 1.0:
        cfg["budget"] = {"keep": keep, "method": "gswa"}
    return cfg


def generate(model, inputs, n: int):
    with torch.no_grad():
        return model.generate(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
            max_new_tokens=n, min_new_tokens=n, do_sample=False,
        )


def timed_generate(model, inputs, n: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((prefill wall, prefill CPU), (decode wall, decode CPU))`` seconds of one ``generate`` of
    ``1 + n`` tokens; decode is the median per token. CPU is this thread's CPU time (one thread
    does all the work: on a loaded machine it leaves out the time the thread waited for a core)."""
    starts: list[tuple[float, float]] = []
    lm = model.model.language_model
    hook = lm.register_forward_pre_hook(lambda *a: starts.append((time.perf_counter(), time.thread_time())))
    try:
        t0 = (time.perf_counter(), time.thread_time())
        generate(model, inputs, 1 + n)
        starts.append((time.perf_counter(), time.thread_time()))
    finally:
        hook.remove()
    prefill = tuple(starts[1][i] - t0[i] for i in range(2))
    decode = tuple(statistics.median(b[i] - a[i] for a, b in zip(starts[1:], starts[2:])) for i in range(2))
    return prefill, decode


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text-layers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=8)
    p.add_argument("--keeps", type=float, nargs="+", default=list(KEEPS))
    p.add_argument("--out", type=Path, default=ASSETS)
    p.add_argument("--shapes", default="internvl2-2b", choices=sorted(SHAPES), help="host sizes (tiny: smoke test)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, shapes = build(args.text_layers, shapes_name=args.shapes)
    inputs = _make_inputs(shapes, 13, torch.device("cpu"), torch.float32, seed=0)
    keeps = list(args.keeps)
    rows = {
        k: {"prefill_s": [], "decode_s": [], "prefill_cpu_s": [], "decode_cpu_s": [], "visual_tokens": None, "peak_mb": None}
        for k in keeps
    }
    for k in keeps:  # memory pass (untimed) and warm-up
        handle = gswa_plugin.enable(model, gswa_config(k))
        generate(model, inputs, 1)
        with PeakMemory() as mem:
            generate(model, inputs, 1)
        rows[k]["peak_mb"] = mem.peak / 2**20
        plan = getattr(handle, "last_budget", None)
        rows[k]["visual_tokens"] = 13 * shapes.tokens_per_tile if k >= 1.0 else plan.selection.num_kept
        gswa_plugin.disable(model)
    for rep in range(args.repeats):  # interleaved: every keep once per repeat
        for k in keeps:
            gswa_plugin.enable(model, gswa_config(k))
            t1, step = timed_generate(model, inputs, args.decode_tokens)
            gswa_plugin.disable(model)
            rows[k]["prefill_s"].append(t1[0])
            rows[k]["decode_s"].append(step[0])
            rows[k]["prefill_cpu_s"].append(t1[1])
            rows[k]["decode_cpu_s"].append(step[1])
            print(f"repeat {rep} keep {k}: prefill {t1[0]:.3f} s wall / {t1[1]:.3f} s CPU, decode "
                  f"{step[0] * 1e3:.1f} / {step[1] * 1e3:.1f} ms/token", flush=True)
    base = statistics.median(rows[1.0]["prefill_s"]) if 1.0 in rows else None
    for k, r in rows.items():
        for clock in ("", "_cpu"):
            r[f"prefill{clock}_median_s"] = statistics.median(r[f"prefill{clock}_s"])
            r[f"decode{clock}_median_ms"] = statistics.median(r[f"decode{clock}_s"]) * 1e3
            if base:
                # per repeat: ratio to the keep=1.0 run of the same repeat (side by side)
                ups = [b / t for b, t in zip(rows[1.0][f"prefill{clock}_s"], r[f"prefill{clock}_s"])]
                r[f"speedup{clock}_per_repeat"] = ups
                r[f"speedup{clock}_median"] = statistics.median(ups)
    result = {
        "settings": {
            "shapes": args.shapes, "text_layers": args.text_layers, "of_layers": shapes.text_layers, "repeats": args.repeats,
            "decode_tokens": args.decode_tokens, "threads": 1, "views": 13, "prompt_tokens": shapes.prompt_tokens,
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        },
        "rows": {str(k): r for k, r in rows.items()},
    }
    write(result, args.out)
    return result


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget_speed.json").write_text(json.dumps(result, indent=1))
    s = result["settings"]
    lines = [
        f"CPU, 1 thread, random weights, {s['text_layers']} of {s.get('of_layers', 24)} "
        f"{'InternVL2-2B' if s.get('shapes', 'internvl2-2b') == 'internvl2-2b' else s['shapes']} decoder layers, 12+1 tiles, "
        f"{s['repeats']} interleaved repeats: medians, and the speed-up of every repeat against keep 1.0 of "
        "the same repeat. CPU = the thread's CPU time; wall = elapsed time.",
        "",
        "| keep | tokens | prefill CPU (s) | speed-up CPU | speed-up wall | decode CPU (ms) | peak (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, r in result["rows"].items():
        cpu, wall = r.get("speedup_cpu_per_repeat", []), r.get("speedup_per_repeat", [])
        lines.append(
            f"| {k} | {r['visual_tokens']} | {r['prefill_cpu_median_s']:.2f} | "
            f"{r.get('speedup_cpu_median', float('nan')):.2f}x ({', '.join(f'{u:.2f}' for u in cpu)}) | "
            f"{r.get('speedup_median', float('nan')):.2f}x ({', '.join(f'{u:.2f}' for u in wall)}) | "
            f"{r['decode_cpu_median_ms']:.0f} | {r['peak_mb']:.0f} |"
        )
    (out / "budget_speed_table.md").write_text("\n".join(lines) + "\n")
    keeps = [float(k) for k in result["rows"]]

    def draw(ax) -> None:
        for clock, label in (("_cpu", "prefill CPU time"), ("", "prefill wall time")):
            ups = [result["rows"][k].get(f"speedup{clock}_median", float("nan")) for k in result["rows"]]
            ax.plot(keeps, ups, "o-", label=f"{label} (through generate)")
        ax.plot(keeps, [1 / k for k in keeps], ":", color="grey", label="1 / keep")

    plot_against_keep(out / "budget_speed.png", "prefill speed-up vs keep 1.0", draw)


if __name__ == "__main__":
    main()
