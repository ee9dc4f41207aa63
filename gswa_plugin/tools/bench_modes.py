"""Every application mode side by side with its host: ``gswa bench`` (the "modes" tables).

For each mode (``none`` is the host itself; ``embed``, ``value``, ``attn_bias``) and each stage
(image encoding, prefill, one decode step, one training step), the same repeat times the host and
then the host with GSWA in that mode, one right after the other, on the same inputs; a figure is
the median ratio over the repeats with the minimum. Unlike the seam tables of
[`gswa_plugin.tools.bench`][gswa_plugin.tools.bench], nothing is scaled: the ratios are those of
the depth that ran (printed with them), so GSWA's fixed seam cost weighs more than at full depth,
while the ``value``/``attn_bias`` cost, which is per language-model layer, keeps its share.

Also: GSWA's parameter share for preset host shapes (InternVL2-1B, -2B, -8B, LLaVA-NeXT-7B),
counted on the ``meta`` device from config shapes, without building the big model.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gswa_plugin.config import GSWAConfig, resolve_config
from gswa_plugin.errors import ConfigError
from gswa_plugin.tools.bench import SHAPES, HostShapes, _make_inputs, _sync_for, host_config, resolve_shapes, text_capture

MODES = ("none", "embed", "value", "attn_bias")
STAGES = ("encode", "prefill", "decode", "train")


@dataclass
class ModesResult:
    """Seconds per repeat, ``times[mode][stage]``; ``none`` is the host (measured before every
    GSWA variant, so each GSWA figure has its own host figure from the same moment)."""

    shapes: str
    tiles: int
    views: int
    sequence_length: int
    vision_layers_run: int
    text_layers_run: int
    dtype: str
    device: str
    repeats: int
    attn_implementation: str
    host: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    gswa: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    wall_s: float = 0.0

    def ratios(self, mode: str, stage: str) -> list[float]:
        return [g / h for g, h in zip(self.gswa[mode][stage], self.host[mode][stage])]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"] = {m: {s: self.ratios(m, s) for s in self.gswa[m]} for m in self.gswa}
        return d


def _build(shapes: HostShapes, vision_layers: int, text_layers: int, dtype: torch.dtype, device: torch.device,
           attn: str) -> Any:
    from transformers import InternVLForConditionalGeneration

    cfg = host_config(shapes, vision_layers, text_layers)
    cfg._attn_implementation = attn
    cfg.text_config._attn_implementation = attn
    cfg.vision_config._attn_implementation = attn
    with torch.random.fork_rng(devices=[]), torch.device(device):  # built on the device: no slow host init
        torch.manual_seed(0)
        model = InternVLForConditionalGeneration(cfg).to(dtype=dtype).eval()
    model.model.vision_tower.requires_grad_(False)  # InternVL2's fine-tuning freezes the encoder
    return model


def _stages(
    model: Any, inputs: dict[str, Any], sync: Callable[[], None], gswa: Any, stages: tuple[str, ...] = STAGES
) -> dict[str, float]:
    """Seconds of each of ``stages`` on ``model`` (with GSWA when ``gswa`` is its handle)."""

    def timed(fn: Callable[[], Any]) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    out: dict[str, float] = {}
    with torch.no_grad():

        capture = text_capture(gswa, model, ids) if gswa is not None else None

        def encode() -> None:
            if gswa is not None:
                gswa.state["input_ids"] = ids  # as the forward's capture hook does
                capture()  # and, for a question-aware variant, its pooled text
            model.model.get_image_features(pixel_values=pixels)

        if "encode" in stages:
            out["encode"] = timed(encode)
        res: dict[str, Any] = {}
        if "prefill" in stages or "decode" in stages:
            out["prefill"] = timed(
                lambda: res.setdefault(
                    "o", model(input_ids=ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)
                )
            )
        if "decode" in stages:
            cache = res["o"].past_key_values
            token = res["o"].logits[:, -1:].argmax(-1)
            out["decode"] = timed(lambda: model(input_ids=token, cache=cache, use_cache=True))
    if "train" not in stages:
        return out
    model.train()
    try:

        def step() -> None:
            logits = model(input_ids=ids, pixel_values=pixels, logits_to_keep=inputs["keep"]).logits[0]
            torch.nn.functional.cross_entropy(logits.float(), inputs["targets"]).backward()

        out["train"] = timed(step)
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    return out


def _trained(module: torch.nn.Module, seed: int = 0) -> None:
    """Give GSWA fixed non-identity parameters (as after training): at identity every weight is
    exactly 1 and ``attn_bias`` leaves the host's attention untouched, which would hide its cost.

    The perturbation is small (0.05): a large one saturates every head's softmax, and with an even
    number of heads split evenly between two tiles the mean over heads gives every tile exactly 1
    again (seen at ``hidden_size: 576`` with 0.5). ``_check_weighted`` catches that case."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_((torch.randn(p.shape, generator=g) * 0.05).to(p.device, p.dtype))


def _check_weighted(handle: Any) -> None:
    """Refuse a measurement whose GSWA weights came out all exactly 1: the modes would then leave
    the host untouched and the ratios would show no cost."""
    batch = handle.last_batch
    if batch is None or batch.weights is None or bool((batch.weights.detach() == 1).all()):
        raise RuntimeError(
            "the benchmark's fixed GSWA parameters gave every view weight exactly 1, so the modes would "
            "measure the host alone; use another seed for `_trained` or another GSWA config"
        )


def run_modes(
    shapes: HostShapes | str = "internvl2-2b",
    tiles: int = 2,
    repeats: int = 3,
    vision_layers: int = 1,
    text_layers: int = 2,
    dtype: str = "float32",
    device: str = "cpu",
    config: GSWAConfig | dict[str, Any] | str | None = None,
    attn_implementation: str = "sdpa",
    modes: tuple[str, ...] = MODES[1:],
    stages: tuple[str, ...] = STAGES,
    prompt_tokens: int | None = None,
) -> ModesResult:
    """Time every mode against its host (see the module docstring).

    Args:
        shapes: host shapes (a name in [`SHAPES`][gswa_plugin.tools.bench.SHAPES]).
        tiles: tiles of the one image (a thumbnail is added above 1).
        repeats: measured repeats (one unmeasured warm-up pass comes first).
        vision_layers: vision layers built and run.
        text_layers: language-model layers built and run.
        dtype: torch dtype name.
        device: torch device.
        config: GSWA settings (its ``mode`` is replaced by each mode in turn).
        attn_implementation: the language model's attention kernel (``sdpa`` and
            FlashAttention keep their fast path in ``attn_bias``; ``eager`` gets a dense mask).
        modes: the GSWA modes to measure.
        stages: the stages to time (e.g. ``("prefill", "decode")`` for a deep language model).
        prompt_tokens: text tokens before the image (default: the shapes').
    """
    from gswa_plugin import api

    shapes = resolve_shapes(shapes, prompt_tokens)
    start = time.perf_counter()
    dev = torch.device(device)
    torch_dtype = getattr(torch, dtype)
    model = _build(shapes, vision_layers, text_layers, torch_dtype, dev, attn_implementation)
    sync = _sync_for(dev)
    views = tiles + (1 if tiles > 1 else 0)
    inputs = _make_inputs(shapes, views, dev, torch_dtype, seed=tiles)
    base = resolve_config(config).to_dict()
    result = ModesResult(
        shapes=shapes.name, tiles=tiles, views=views, sequence_length=int(inputs["input_ids"].shape[1]),
        vision_layers_run=vision_layers, text_layers_run=text_layers, dtype=dtype, device=str(dev),
        repeats=repeats, attn_implementation=attn_implementation,
    )
    for mode in modes:
        result.host[mode] = {s: [] for s in STAGES if s in stages}
        result.gswa[mode] = {s: [] for s in STAGES if s in stages}
    for i in range(1 + repeats):
        for mode in modes:
            host_t = _stages(model, inputs, sync, None, stages)
            handle = api.enable(model, {**base, "mode": mode})
            try:
                handle.module.to(device=dev, dtype=torch_dtype)
                _trained(handle.module)
                gswa_t = _stages(model, inputs, sync, handle, stages)
                _check_weighted(handle)
            finally:
                api.disable(model)
            if i == 0:
                continue  # warm-up
            for s in result.host[mode]:
                result.host[mode][s].append(host_t[s])
                result.gswa[mode][s].append(gswa_t[s])
    result.wall_s = time.perf_counter() - start
    return result


def describe_modes(result: ModesResult) -> list[str]:
    s = SHAPES.get(result.shapes)
    widths = (
        f" (vision width {s.vision_hidden}, language width {s.text_hidden}, {s.tokens_per_tile} tokens per tile)"
        if s else ""
    )
    return [
        f"Modes, side by side: InternVLForConditionalGeneration at {result.shapes} widths{widths}, "
        f"{result.vision_layers_run} vision and {result.text_layers_run} language layers actually run (not scaled), "
        f"{result.tiles} tile(s) + thumbnail = {result.views} views, sequence {result.sequence_length} tokens, "
        f"{result.dtype} on {result.device}, attention {result.attn_implementation}; "
        f"{result.repeats} repeats after one warm-up, host and GSWA timed one right after the other "
        f"(wall time {result.wall_s:.0f} s).",
    ]


def modes_table(result: ModesResult) -> str:
    """Markdown: per mode and stage, the host's time and GSWA's ratio to it (median [min])."""
    head = "| mode | " + " | ".join(
        f"{name} (host)" for name in ("image encoding", "prefill", "decode step", "training step")
    ) + " |"
    out = [head, "|---|---|---|---|---|"]
    for mode in result.gswa:
        cells = []
        for stage in STAGES:
            if stage not in result.gswa[mode]:
                cells.append("not run")
                continue
            r = result.ratios(mode, stage)
            h = statistics.median(result.host[mode][stage])
            cells.append(f"{statistics.median(r):.3f}x [{min(r):.3f}] ({h * 1e3:.3g} ms)")
        out.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# --- op counts ---------------------------------------------------------------------------------
class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_mode_ops(
    shapes: HostShapes | str = "tiny",
    text_layers: int = 24,
    tiles: int = 2,
    modes: tuple[str, ...] = ("value", "attn_bias"),
    attn_implementation: str = "sdpa",
    config: GSWAConfig | dict[str, Any] | str | None = None,
) -> dict[str, dict[str, tuple[int, int]]]:
    """Tensor ops dispatched by the prefill (``logits_to_keep=1``) and by one decode step from its
    cache, host and GSWA (fixed non-identity parameters), counted with a ``TorchDispatchMode``:
    deterministic where timings are not, and independent of the widths.

    Returns:
        ``{mode: {stage: (host ops, GSWA ops)}}`` for the stages ``prefill`` and ``decode``.
    """
    from gswa_plugin import api

    if isinstance(shapes, str):
        shapes = SHAPES[shapes]
    dev = torch.device("cpu")
    model = _build(shapes, 1, text_layers, torch.float32, dev, attn_implementation)
    views = tiles + (1 if tiles > 1 else 0)
    inputs = _make_inputs(shapes, views, dev, torch.float32, seed=tiles)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    base = resolve_config(config).to_dict()

    def counts(handle: Any) -> dict[str, int]:
        with torch.no_grad():
            if handle is not None:
                handle.state["input_ids"] = ids
            with _CountOps() as prefill:
                out = model(input_ids=ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1:].argmax(-1)
            with _CountOps() as decode:
                model(input_ids=token, cache=out.past_key_values, use_cache=True)
        return {"prefill": prefill.count, "decode": decode.count}

    host = counts(None)
    result: dict[str, dict[str, tuple[int, int]]] = {}
    for mode in modes:
        handle = api.enable(model, {**base, "mode": mode})
        try:
            _trained(handle.module)
            gswa = counts(handle)
            _check_weighted(handle)
        finally:
            api.disable(model)
        result[mode] = {stage: (host[stage], gswa[stage]) for stage in host}
    return result


def ops_table(counts: dict[str, dict[str, tuple[int, int]]]) -> str:
    """Markdown: ops GSWA adds to the host's per stage (host's count in brackets)."""
    out = ["| mode | prefill: ops added (host) | decode step: ops added (host) |", "|---|---|---|"]
    for mode, stages in counts.items():
        cells = [f"+{g - h:,} ({h:,})" for h, g in (stages["prefill"], stages["decode"])]
        out.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# --- parameter share of preset hosts -----------------------------------------------------------
#: Config shapes of preset hosts (public model cards): vision encoder width (GSWA's summary
#: width) and the host built on the ``meta`` device to count its parameters.
PRESETS: dict[str, dict[str, Any]] = {
    "InternVL2-1B": dict(family="internvl", vision=1024, text=dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151655, tie_word_embeddings=True)),
    "InternVL2-2B": dict(family="internvl", vision=1024, text=dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
        num_attention_heads=16, num_key_value_heads=8, vocab_size=92553)),
    "InternVL2-8B": dict(family="internvl", vision=1024, text=dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=92553)),
    "LLaVA-NeXT-7B": dict(family="llava_next", vision=1024, text=dict(
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32064)),
}


def _preset_host(spec: dict[str, Any]) -> Any:
    text = dict(spec["text"])
    tie = text.pop("tie_word_embeddings", False)
    if spec["family"] == "internvl":
        from transformers import InternVLConfig, InternVLForConditionalGeneration

        cfg = InternVLConfig(
            vision_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                               image_size=[448, 448], patch_size=[14, 14], attention_bias=True),
            text_config=text, downsample_ratio=0.5, tie_word_embeddings=tie,
        )
        return InternVLForConditionalGeneration(cfg)
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    cfg = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, num_hidden_layers=24,
                           num_attention_heads=16, intermediate_size=4096, image_size=336, patch_size=14,
                           projection_dim=768),
        text_config=text, tie_word_embeddings=tie,
    )
    return LlavaNextForConditionalGeneration(cfg)


def parameter_shares(config: GSWAConfig | dict[str, Any] | str | None = None) -> list[dict[str, Any]]:
    """GSWA's parameters over each preset host's (both counted on the ``meta`` device)."""
    from gswa_plugin.plugins import variants
    from gswa_plugin.weighting import GSWAModule, count_parameters

    cfg = resolve_config(config)
    registry = variants()  # built-in and plugin variants, as enable() finds them
    if cfg.variant not in registry:
        raise ConfigError(
            [
                f"variant: unknown variant '{cfg.variant}': the installed variants are "
                f"{', '.join(sorted(registry))} (`gswa adapters` lists them with the plugin that provides each)"
            ]
        )
    factory = registry[cfg.variant]
    rows = []
    with torch.device("meta"):
        for name, spec in PRESETS.items():
            host = count_parameters(_preset_host(spec))
            # a question-aware variant also reads the prompt embedding, whose width is the LM's
            extra = {"text_dim": spec["text"]["hidden_size"]} if getattr(factory, "needs_text", False) else {}
            gswa = count_parameters(GSWAModule(spec["vision"], cfg, factory(spec["vision"], cfg, **extra)))
            rows.append({"host": name, "host_parameters": host, "gswa_parameters": gswa, "share": gswa / host})
    return rows


def shares_table(rows: list[dict[str, Any]]) -> str:
    out = ["| preset host shape | host parameters | GSWA parameters | share |", "|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['host']} | {r['host_parameters'] / 1e9:.3f} B | {r['gswa_parameters']:,} | {100 * r['share']:.3f}% |"
        )
    return "\n".join(out) + "\n"
