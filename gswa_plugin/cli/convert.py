"""``gswa convert-internvl2 SRC DST`` (InternVL2 released layout -> native transformers InternVL) and
``gswa convert-llava SRC DST`` (llava training code checkpoint -> transformers LLaVA-NeXT)."""

from __future__ import annotations

from pathlib import Path

import typer

from gswa_plugin.cli import app
from gswa_plugin.cli._common import console, reported_errors


@app.command("convert-internvl2")
def convert_internvl2_cmd(
    src: Path = typer.Argument(..., help="InternVL2 checkpoint directory in the released layout (InternVLChatModel)."),
    dst: Path = typer.Argument(
        ..., help="Output directory for the native InternVLForConditionalGeneration checkpoint."
    ),
    dtype: str = typer.Option("keep", help="Dtype of the written weights: keep, bfloat16, float16 or float32."),
    tokenizer: bool = typer.Option(
        True, help="Also convert the tokenizer (InternLM2's tokenizer.model needs sentencepiece)."
    ),
    max_patches: int = typer.Option(
        0, help="Tiles per image of the written image processor (0: the source's max_dynamic_patch)."
    ),
) -> None:
    """Convert an InternVL2 checkpoint (InternLM2 language model, fused wqkv) into transformers' native InternVL
    format with a Llama language model, loadable without remote code. Every key is mapped and the result is
    checked against the native class strictly."""
    import torch

    from gswa_plugin.tools.convert_internvl2 import convert

    dtypes = {"keep": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in dtypes:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(dtypes)}")
    with reported_errors():
        summary = convert(src, dst, dtype=dtypes[dtype], tokenizer=tokenizer, max_patches=max_patches or None)
    for key, value in summary.items():
        console.print(f"{key}: {value}")
    console.print(f"[green]ok[/] wrote {dst}")


@app.command("convert-llava")
def convert_llava_cmd(
    src: Path = typer.Argument(..., help="llava checkpoint directory (LlavaLlamaForCausalLM, LLaVA-1.5/1.6 training code)."),
    dst: Path = typer.Argument(..., help="Output directory for the LlavaNextForConditionalGeneration checkpoint."),
    dtype: str = typer.Option("keep", help="Dtype of the written weights: keep, bfloat16, float16 or float32."),
) -> None:
    """Convert a checkpoint written by llava's training code (anyres, spatial_unpad, mlp2x_gelu) into
    transformers' LLaVA-NeXT with its processor, so lmms-eval's gswa_llava_next evaluates it. A GSWA saved
    beside it (SRC/gswa) is carried over to DST/gswa. Every key is mapped and checked strictly."""
    import torch

    from gswa_plugin.integrations.llava.convert import convert

    dtypes = {"keep": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in dtypes:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(dtypes)}")
    with reported_errors():
        summary = convert(src, dst, dtype=dtypes[dtype])
    for key, value in summary.items():
        console.print(f"{key}: {value}")
    console.print(f"[green]ok[/] wrote {dst}")
