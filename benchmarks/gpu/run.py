"""GSWA on one GPU: what ``benchmarks/gpu/run.sh`` runs (``python -m benchmarks.gpu.run``).

Sections, each recorded in one JSON file and one Markdown table:

1. ``identity``: an untrained GSWA leaves the host unchanged, bit for bit: logits of a forward
   and tokens of a greedy ``generate()``, per mode, on the real-width InternVL2-2B architecture
   (random weights, bf16, sdpa).
2. ``seam``: GSWA's time over the image encoding's at 1 and 12 + 1 tiles
   ([`gswa_plugin.tools.bench.run`][gswa_plugin.tools.bench.run], synchronised clocks).
3. ``modes``: image encoding, prefill, decode step and training step per mode, host and GSWA
   side by side, with ``sdpa`` and, where ``flash_attn`` is installed, ``flash_attention_2``
   (``attn_bias`` wraps either kernel: extra head dimensions carry ``log w``, head size a multiple of 8).
4. ``training``: 20 steps of the SleighVL recipe (vision encoder frozen; projector, language model
   and GSWA train; AdamW; bf16; gradient checkpointing) per mode (``embed``, ``value``) and for the
   host alone: steps per second and peak memory.
5. ``compile``: ``torch.compile`` of the GSWA model agrees with eager; time of a compiled forward.

``--smoke`` runs every section at tiny shapes with one repeat, so that the script is exercised on
a CPU by the test suite (seconds); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import gswa_plugin
from gswa_plugin.tools import bench
from gswa_plugin.tools.bench_modes import _build, modes_table, run_modes

OUT = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _identity(
    shapes: Any, layers: tuple[int, int], dtype: torch.dtype, device: torch.device, new_tokens: int
) -> dict[str, Any]:
    model = _build(shapes, *layers, dtype, device, "sdpa")
    inputs = bench._make_inputs(shapes, 3, device, dtype, seed=0)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=pixels).logits
        want_gen = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=new_tokens, do_sample=False)
    out: dict[str, Any] = {}
    for mode in ("embed", "value", "attn_bias"):
        handle = gswa_plugin.enable(model, {"mode": mode})
        handle.module.to(device=device, dtype=dtype)
        try:
            with torch.no_grad():
                got = model(input_ids=ids, pixel_values=pixels).logits
                gen = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=new_tokens, do_sample=False)
        finally:
            gswa_plugin.disable(model)
        out[mode] = {
            "forward_bit_exact": bool(torch.equal(got, want)),
            "forward_max_abs_diff": float((got.float() - want.float()).abs().max()),
            "generate_equal": bool(torch.equal(gen, want_gen)),
        }
    return out


def _training(
    shapes: Any, layers: tuple[int, int], dtype: torch.dtype, device: torch.device, steps: int
) -> dict[str, Any]:
    inputs = bench._make_inputs(shapes, 13 if shapes.name != "tiny" else 3, device, dtype, seed=1)
    out: dict[str, Any] = {}
    for mode in ("none", "embed", "value"):
        model = _build(shapes, *layers, dtype, device, "sdpa")
        if mode != "none":
            handle = gswa_plugin.enable(model, {"mode": mode})
            handle.module.to(device=device, dtype=dtype)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def step() -> float:
            logits = model(
                input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], logits_to_keep=inputs["keep"]
            ).logits[0]
            loss = torch.nn.functional.cross_entropy(logits.float(), inputs["targets"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        step()  # warm-up (allocator, kernels)
        _sync(device)
        t = time.perf_counter()
        losses = [step() for _ in range(steps)]
        _sync(device)
        seconds = time.perf_counter() - t
        out[mode] = {
            "steps": steps,
            "steps_per_s": steps / seconds,
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "final_loss": losses[-1],
        }
        model = opt = params = None  # free this mode's model before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _compile(
    shapes: Any, layers: tuple[int, int], dtype: torch.dtype, device: torch.device, backend: str
) -> dict[str, Any]:
    model = _build(shapes, *layers, dtype, device, "sdpa")
    handle = gswa_plugin.enable(model, {"mode": "value"})
    handle.module.to(device=device, dtype=dtype)
    with torch.no_grad():  # non-uniform weights, so that agreement is not trivial
        for i, p in enumerate(handle.module.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3000 + i)).to(p) * 0.1)
    inputs = bench._make_inputs(shapes, 3, device, dtype, seed=2)
    kw = dict(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], logits_to_keep=1)
    with torch.no_grad():
        eager = model(**kw).logits
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=backend)
        t = time.perf_counter()
        got = compiled(**kw).logits
        _sync(device)
        first = time.perf_counter() - t
        t = time.perf_counter()
        compiled(**kw)
        _sync(device)
        second = time.perf_counter() - t
    return {
        "max_abs_diff": float((got.float() - eager.float()).abs().max()),
        "first_call_s": first,
        "compiled_call_s": second,
    }


def run(device: str, smoke: bool, out_dir: Path) -> dict[str, Any]:
    dev = torch.device(device)
    shapes = bench.SHAPES["tiny" if smoke else "internvl2-2b"]
    full = (shapes.vision_layers, shapes.text_layers)
    dtype = torch.bfloat16
    started = time.perf_counter()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "smoke": smoke,
        "shapes": shapes.name,
    }
    section_s: dict[str, float] = {}
    result["section_s"] = section_s
    t0 = time.perf_counter()
    result["identity"] = _identity(shapes, full, dtype, dev, 2 if smoke else 8)
    section_s["identity"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    seam = bench.run(
        shapes=shapes, tiles=[1, 12] if not smoke else [2], repeats=1 if smoke else 5, warmup=0 if smoke else 1,
        inner_reps=1 if smoke else 10,
        vision_layers=full[0], text_layers=full[1], dtype="bfloat16", device=device, memory=False, progress=False,
    )
    result["seam"] = {str(r.tiles): r.ratios() for r in seam.rows}
    section_s["seam"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kernels = ["sdpa"]
    try:
        import flash_attn  # noqa: F401

        kernels.append("flash_attention_2")
    except ImportError:
        result["flash_attention_2"] = "not installed"
    result["modes"] = {}
    modes_md = []
    for kernel in kernels:
        modes = ("embed", "value", "attn_bias")
        r = run_modes(
            shapes, tiles=2 if smoke else 12, repeats=1 if smoke else 3, vision_layers=full[0],
            text_layers=full[1], dtype="bfloat16", device=device, attn_implementation=kernel, modes=modes,
        )
        result["modes"][kernel] = r.to_dict()
        modes_md += [f"Attention `{kernel}`:", "", modes_table(r)]
    section_s["modes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result["training"] = _training(shapes, full, dtype, dev, 1 if smoke else 20)
    section_s["training"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the smoke run only traces (backend "eager"): it checks the script, not the compiler
    result["compile"] = _compile(shapes, full, dtype, dev, "eager" if smoke else "inductor")
    result["compile"]["backend"] = "eager" if smoke else "inductor"
    section_s["compile"] = time.perf_counter() - t0
    result["wall_s"] = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_results.json").write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
    (out_dir / "gpu_results.md").write_text(markdown(result, modes_md), encoding="utf-8")
    return result


def markdown(result: dict[str, Any], modes_md: list[str]) -> str:
    lines = [
        f"GSWA on {result['device']} (torch {result['torch']}, {result['shapes']} shapes"
        f"{', SMOKE RUN: numbers mean nothing' if result['smoke'] else ''}; wall {result['wall_s']:.0f} s).",
        "",
        "| identity at init | forward bit-exact | max abs diff | generate equal |",
        "|---|---|---|---|",
    ]
    for mode, r in result["identity"].items():
        lines.append(f"| {mode} | {r['forward_bit_exact']} | {r['forward_max_abs_diff']:.3g} | {r['generate_equal']} |")
    lines += ["", "| tiles | GSWA / image encoding (median of repeats) |", "|---|---|"]
    for tiles, ratios in result["seam"].items():
        enc = sorted(ratios["encode"])[len(ratios["encode"]) // 2]
        lines.append(f"| {tiles} | {100 * enc:.3g}% |")
    lines += ["", *modes_md, "| training (20 steps) | steps/s | peak memory |", "|---|---|---|"]
    for mode, r in result["training"].items():
        peak = "—" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f} MiB"
        lines.append(f"| {mode} | {r['steps_per_s']:.3g} | {peak} |")
    c = result["compile"]
    lines += ["", f"torch.compile: max abs diff to eager {c['max_abs_diff']:.3g}; compiled call {c['compiled_call_s']:.3g} s "
              f"(first call {c['first_call_s']:.3g} s)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat (a CPU test of the script)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; pass --device cpu --smoke to check the script on a CPU")
    result = run(args.device, args.smoke, args.out)
    print((args.out / "gpu_results.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out / 'gpu_results.json'} and {args.out / 'gpu_results.md'} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
