"""``gswa bench``: what GSWA costs next to its host, side by side in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gswa_plugin.cli import app
from gswa_plugin.cli._common import console, reported_errors


def _tile_counts(text: str) -> list[int]:
    from gswa_plugin.errors import ConfigError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise ConfigError([f"--tiles takes comma-separated integers, got {text!r}"], "gswa bench") from exc


@app.command("bench")
def bench_cmd(
    shapes: str = typer.Option(
        "internvl2-2b", help="Host shapes: internvl2-2b, internvl2-1b (the real sizes) or tiny (smoke test)."
    ),
    tiles: Optional[str] = typer.Option(
        None, help="Tile counts per image (a thumbnail is added above 1). Default 1,4,12; with --full 1,2,4,6,9,12."
    ),
    repeats: int = typer.Option(5, help="Measured repeats per tile count; each gives one ratio."),
    warmup: int = typer.Option(1, help="Unmeasured passes before the first measurement."),
    vision_layers: int = typer.Option(1, help="Vision layers actually run; the others are scaled in per layer."),
    text_layers: int = typer.Option(1, help="Language-model layers actually run; the others are scaled in."),
    dtype: str = typer.Option("bfloat16", help="bfloat16 (InternVL2's), float16 or float32."),
    device: str = typer.Option("cpu", help="Torch device."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (1 gives steadier ratios on a shared machine)."),
    config: Optional[Path] = typer.Option(None, help="GSWA YAML (top-level `gswa:` block). Default: the defaults."),
    memory: bool = typer.Option(True, help="Also measure the peak memory GSWA adds (largest tile count)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every measurement as JSON."),
    markdown: Optional[Path] = typer.Option(None, help="Write the tables as markdown."),
    plot: Optional[Path] = typer.Option(None, help="Write a plot of the overhead against tile count (PNG)."),
    check: bool = typer.Option(False, help="Exit with status 1 when a target is missed."),
    from_json: Optional[Path] = typer.Option(
        None, help="Render the tables and plot of a saved --json result instead of measuring."
    ),
    modes: bool = typer.Option(
        True, help="Also time every mode (embed, value, attn_bias) against the host: image encoding, prefill, "
        "decode step, training step, at the depth that runs (not scaled)."
    ),
    mode_tiles: Optional[int] = typer.Option(None, help="Tiles of the modes tables' image. Default 2; --full 12."),
    mode_text_layers: int = typer.Option(2, help="Language-model layers run for the modes tables."),
    full: bool = typer.Option(False, help="The long run: every tile count, modes at 12 + 1 tiles."),
    prompt_tokens: Optional[int] = typer.Option(
        None, help="Text tokens before the image (default 32; 32 answer tokens follow it). The question-aware "
        "variants pool every text token of the call."
    ),
) -> None:
    """Measure GSWA's time, parameters and memory as ratios of the host's, at each tile count.

    The targets: GSWA under 1% of the image-encoding time at every tile count and under 0.5% of
    the host's parameters (with --check, a missed target exits with status 1).
    """
    from gswa_plugin.tools import bench, bench_modes

    with reported_errors():
        # first, so that a config the share count cannot build fails before minutes of timing
        shares = bench_modes.parameter_shares(config)
    with reported_errors():
        result = (
            bench.load_json(from_json)
            if from_json is not None
            else bench.run(
                shapes=shapes,
                tiles=_tile_counts(tiles or ("1,2,4,6,9,12" if full else "1,4,12")),
                repeats=repeats,
                warmup=warmup,
                vision_layers=vision_layers,
                text_layers=text_layers,
                dtype=dtype,
                device=device,
                config=config,
                memory=memory,
                threads=threads,
                prompt_tokens=prompt_tokens,
            )
        )
    modes_result = None
    if modes and from_json is None:
        with reported_errors():
            modes_result = bench_modes.run_modes(
                shapes=shapes,
                tiles=mode_tiles or (12 if full else 2),
                repeats=min(repeats, 3) if not full else repeats,
                vision_layers=vision_layers,
                text_layers=min(mode_text_layers, bench.SHAPES[shapes].text_layers),
                dtype=dtype,
                device=device,
                config=config,
                prompt_tokens=prompt_tokens,
            )
    for line in bench.describe(result):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print()
    text = bench.markdown_tables(result)
    if modes_result is not None:
        text += "\n" + "\n\n".join(bench_modes.describe_modes(modes_result)) + "\n\n"
        text += bench_modes.modes_table(modes_result)
        layers = bench.SHAPES[shapes].text_layers
        with reported_errors():
            ops = bench_modes.count_mode_ops("tiny", text_layers=layers, config=config)
        text += (
            f"\nTensor ops GSWA adds (counted, so deterministic; tiny widths, {layers} language layers, "
            "2 tiles + thumbnail, float32, sdpa; host's count in brackets):\n\n"
        )
        text += bench_modes.ops_table(ops)
    text += "\nParameter share of the default config on preset host shapes (counted from config shapes):\n\n"
    text += bench_modes.shares_table(shares)
    console.print(text, highlight=False, markup=False, soft_wrap=True)
    if json_out is not None:
        console.print(f"wrote {bench.save_json(result, json_out)}")
        if modes_result is not None:
            import json

            modes_path = json_out.with_name(json_out.stem + "_modes.json")
            modes_path.write_text(json.dumps(modes_result.to_dict(), indent=1) + "\n", encoding="utf-8")
            console.print(f"wrote {modes_path}")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text("\n\n".join(bench.describe(result)) + "\n\n" + text, encoding="utf-8")
        console.print(f"wrote {markdown}")
    if plot is not None:
        console.print(f"wrote {bench.plot(result, plot)}")
    if check and not all(result.targets().values()):
        raise typer.Exit(code=1)
