"""What GSWA costs next to its host, measured side by side: ``gswa bench``.

The host is a transformers ``InternVLForConditionalGeneration`` at InternVL2-2B shapes
(InternViT-300M: width 1024, 24 layers, 448 px tiles, patch 14; pixel shuffle to 256 tokens of
width 4096; projector 4096 -> 2048; InternLM2-1.8B as the Llama-shaped language model that
transformers' conversion produces) with random weights. Timing does not depend on the values.

For every tile count the same repeat measures, one right after the other:

* the host's image encoding (vision encoder, pixel shuffle, projector) and its whole prefill
  (``logits_to_keep=1``), without GSWA;
* a training step of the host: image encoding forward + backward, and the whole step (loss on
  the answer tokens) forward + backward. The vision encoder is frozen, as in InternVL2's
  fine-tuning recipe, so its backward is not run; projector and language model are trainable;
* GSWA's share: everything the patched seam does beyond the host's own
  ``get_image_features`` (summaries, layout from ``input_ids``, both hooks, the GSWA module,
  scaling the features), measured by wrapping a stand-in for ``get_image_features`` that
  returns precomputed encoder outputs of the right shapes; in training with GSWA trainable,
  forward + backward to the features and GSWA's parameters.

Each repeat gives a ratio; a figure is the median ratio with its min-max over the repeats.

Reduced depth: the host may be built with fewer vision and language layers than the real one
(the full InternVL2-2B is slow on a CPU). The time spent inside the layers that ran is clocked
with module hooks, and the missing layers are added as that many times the mean per-layer time
(``scaled`` in the output). Parameter counts are exact for the full depth (counted on the
``meta`` device).

Peak memory added: the peak of live tensor bytes allocated during the image encoding and during
the training step, with GSWA enabled minus without, at the largest tile count, tracked op by op
with a ``TorchDispatchMode`` (works on any device).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gswa_plugin.config import GSWAConfig, resolve_config
from gswa_plugin.errors import ConfigError
from gswa_plugin.weighting import count_parameters

MIB = 1024**2
#: The paper's tile counts: InternVL2 trains with up to 12 tiles plus a thumbnail.
DEFAULT_TILES: tuple[int, ...] = (1, 2, 4, 6, 9, 12)
#: The targets this benchmark checks.
TARGET_TIME_RATIO = 0.01
TARGET_PARAM_RATIO = 0.005


@dataclass(frozen=True)
class HostShapes:
    """Sizes of the benchmarked host (an ``InternVLForConditionalGeneration``)."""

    name: str
    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_intermediate: int = 4096
    image_size: int = 448
    patch_size: int = 14
    text_hidden: int = 2048
    text_layers: int = 24
    text_heads: int = 16
    text_kv_heads: int = 8
    text_intermediate: int = 8192
    vocab_size: int = 92553
    prompt_tokens: int = 32
    answer_tokens: int = 32

    @property
    def tokens_per_tile(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // 4


#: Named host shapes: the real InternVL2-2B sizes and a tiny set for smoke tests.
SHAPES: dict[str, HostShapes] = {
    "internvl2-2b": HostShapes("internvl2-2b"),
    # InternVL2-1B: InternViT-300M + a Qwen2-0.5B-shaped language model (built as Llama: same
    # attention and MLP shapes, without Qwen2's q/k/v biases)
    "internvl2-1b": HostShapes(
        "internvl2-1b",
        text_hidden=896,
        text_heads=14,
        text_kv_heads=2,
        text_intermediate=4864,
        vocab_size=151655,
    ),
    "tiny": HostShapes(
        "tiny",
        vision_hidden=32,
        vision_layers=2,
        vision_heads=2,
        vision_intermediate=64,
        image_size=56,
        text_hidden=64,
        text_layers=2,
        text_heads=4,
        text_kv_heads=2,
        text_intermediate=128,
        vocab_size=512,
        prompt_tokens=8,
        answer_tokens=8,
    ),
}


def resolve_shapes(shapes: HostShapes | str, prompt_tokens: int | None = None) -> HostShapes:
    """``shapes`` by name (or as given), with ``prompt_tokens`` text tokens before the image when set."""
    if isinstance(shapes, str):
        if shapes not in SHAPES:
            raise ConfigError([f"unknown shapes {shapes!r}; choose one of {', '.join(SHAPES)}"])
        shapes = SHAPES[shapes]
    if prompt_tokens is not None:
        if int(prompt_tokens) < 1:
            raise ConfigError([f"prompt_tokens must be >= 1, got {prompt_tokens}"], "gswa bench")
        shapes = replace(shapes, prompt_tokens=int(prompt_tokens))
    return shapes


def host_config(shapes: HostShapes, vision_layers: int | None = None, text_layers: int | None = None) -> Any:
    """The ``InternVLConfig`` of the host at the given depth (full depth by default)."""
    from transformers import InternVLConfig

    v = shapes.vision_layers if vision_layers is None else vision_layers
    t = shapes.text_layers if text_layers is None else text_layers
    return InternVLConfig(
        vision_config=dict(
            hidden_size=shapes.vision_hidden,
            num_hidden_layers=v,
            num_attention_heads=shapes.vision_heads,
            intermediate_size=shapes.vision_intermediate,
            image_size=[shapes.image_size, shapes.image_size],
            patch_size=[shapes.patch_size, shapes.patch_size],
            attention_bias=True,  # InternViT-300M has qkv biases
            use_mean_pooling=True,
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=shapes.text_hidden,
            intermediate_size=shapes.text_intermediate,
            num_hidden_layers=t,
            num_attention_heads=shapes.text_heads,
            num_key_value_heads=shapes.text_kv_heads,
            vocab_size=shapes.vocab_size,
            max_position_embeddings=32768,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        image_token_id=shapes.vocab_size - 1,
        image_seq_length=shapes.tokens_per_tile,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,  # InternLM2 has its own output layer
    )


def host_parameter_count(shapes: HostShapes) -> int:
    """Exact parameter count of the full-depth host, built on the ``meta`` device (no memory)."""
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(host_config(shapes))
    return count_parameters(model)


# --- measuring tools ---------------------------------------------------------------------------
class _Clock:
    """Seconds spent inside some modules' forward (and backward), clocked with hooks.

    Backward is clocked from the moment the gradient of a module's output is ready to the moment
    the gradient of its input is, through tensor hooks (the input must require grad).
    """

    def __init__(self, modules: Sequence[nn.Module], sync: Callable[[], None], backward: bool = False):
        self.forward_s = 0.0
        self.backward_s = 0.0
        self._sync = sync
        self._backward = backward
        self._start: dict[int, float] = {}
        self._backward_start: dict[int, float] = {}
        self._handles = []
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post, with_kwargs=True))

    def reset(self) -> None:
        self.forward_s = self.backward_s = 0.0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def _now(self) -> float:
        self._sync()
        return time.perf_counter()

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._backward and torch.is_grad_enabled():
            first = args[0] if args else next(iter(kwargs.values()))
            if isinstance(first, torch.Tensor) and first.requires_grad:
                key = id(module)
                first.register_hook(lambda g, key=key: self._end_backward(key))
        self._start[id(module)] = self._now()

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self.forward_s += self._now() - self._start.pop(id(module))
        if self._backward and torch.is_grad_enabled():
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor) and out.requires_grad:
                key = id(module)
                out.register_hook(lambda g, key=key: self._start_backward(key))

    def _start_backward(self, key: int) -> None:
        self._backward_start[key] = self._now()

    def _end_backward(self, key: int) -> None:
        start = self._backward_start.pop(key, None)
        if start is not None:
            self.backward_s += self._now() - start


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensors allocated while active, sampled after every tensor op.

    Tensors that existed before (parameters, inputs) are not counted; an op's output that shares
    storage with one of its inputs (a view, an in-place op) is not a new allocation. Also counts
    the tensor ops dispatched (``ops``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        inputs = {
            t.untyped_storage()._cdata
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._live:
                continue
            self._live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# --- the benchmark -----------------------------------------------------------------------------
@dataclass
class TileResult:
    """Measurements at one tile count. Lists hold one value per repeat; times in seconds."""

    tiles: int
    views: int
    sequence_length: int
    encode_s: list[float] = field(default_factory=list)
    prefill_s: list[float] = field(default_factory=list)
    gswa_s: list[float] = field(default_factory=list)
    train_encode_s: list[float] = field(default_factory=list)
    train_step_s: list[float] = field(default_factory=list)
    train_gswa_s: list[float] = field(default_factory=list)
    gswa_ops: int = 0
    peak_encode_bytes: int | None = None
    peak_encode_added_bytes: int | None = None
    peak_step_bytes: int | None = None
    peak_step_added_bytes: int | None = None

    def ratios(self) -> dict[str, list[float]]:
        """Per repeat: GSWA's time over the host's (inference and training)."""
        return {
            "encode": [g / h for g, h in zip(self.gswa_s, self.encode_s)],
            "prefill": [g / h for g, h in zip(self.gswa_s, self.prefill_s)],
            "train_encode": [g / h for g, h in zip(self.train_gswa_s, self.train_encode_s)],
            "train_step": [g / h for g, h in zip(self.train_gswa_s, self.train_step_s)],
        }


@dataclass
class BenchResult:
    """Everything one ``gswa bench`` run measured."""

    shapes: HostShapes
    gswa_config: dict[str, Any]
    dtype: str
    device: str
    repeats: int
    vision_layers_run: int
    text_layers_run: int
    host_parameters: int
    gswa_parameters: int
    torch_threads: int
    rows: list[TileResult] = field(default_factory=list)

    @property
    def scaled(self) -> bool:
        return self.vision_layers_run < self.shapes.vision_layers or self.text_layers_run < self.shapes.text_layers

    @property
    def param_ratio(self) -> float:
        return self.gswa_parameters / self.host_parameters

    def worst_encode_ratio(self) -> float:
        """The largest GSWA/image-encoding ratio of any repeat, inference or training."""
        return max(max(r.ratios()["encode"] + r.ratios()["train_encode"]) for r in self.rows)

    def targets(self) -> dict[str, bool]:
        return {
            "time": self.worst_encode_ratio() < TARGET_TIME_RATIO,
            "params": self.param_ratio < TARGET_PARAM_RATIO,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, raw in zip(self.rows, d["rows"]):
            raw["ratios"] = row.ratios()
        d["param_ratio"] = self.param_ratio
        d["scaled"] = self.scaled
        d["targets"] = self.targets()
        return d


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _make_inputs(shapes: HostShapes, views: int, device: torch.device, dtype: torch.dtype, seed: int) -> dict[str, Any]:
    """Pixel values for ``views`` tiles and a prompt laid out as InternVL's processor does:
    ``<s> prompt <img> <IMG_CONTEXT> x 256 per view </img> answer``."""
    gen = torch.Generator().manual_seed(seed)
    vocab = shapes.vocab_size
    ctx, img_start, img_end = vocab - 1, vocab - 2, vocab - 3

    def text(n: int) -> torch.Tensor:
        return torch.randint(4, vocab - 4, (n,), generator=gen)

    ids = torch.cat(
        [
            torch.tensor([1]),
            text(shapes.prompt_tokens),
            torch.tensor([img_start]),
            torch.full((views * shapes.tokens_per_tile,), ctx),
            torch.tensor([img_end]),
            text(shapes.answer_tokens),
        ]
    )[None]
    answer_pos = torch.arange(ids.shape[1] - shapes.answer_tokens, ids.shape[1])
    pixels = torch.randn(views, 3, shapes.image_size, shapes.image_size, generator=gen)
    return {
        "input_ids": ids.to(device),
        "pixel_values": pixels.to(device=device, dtype=dtype),
        "keep": (answer_pos - 1).to(device),  # logits at p-1 predict the token at p
        "targets": ids[0, answer_pos].to(device),
    }


def text_capture(handle: Any, model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    """What the model's forward pre-hook does before the seam for a question-aware variant: pool
    the call's text (``ids`` looked up in the host's input embedding table) into ``handle.state``.
    The benchmarks that call the seam directly run it first, inside GSWA's timed work (it is part
    of GSWA's cost); for an image-only variant it does nothing."""
    if not getattr(handle.module, "uses_text", False):
        return lambda: None
    from gswa_plugin.adapters._text import capture_text

    return lambda: capture_text(model, handle, ids)


def _timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


@contextmanager
def _seam_stand_in(model: nn.Module, outputs: Callable[[], Any]) -> Iterator[None]:
    """Make ``model.model.get_image_features`` return ``outputs()`` at once, so that enabling GSWA
    on top of it leaves exactly GSWA's own work in the call."""
    inner = model.model

    def get_image_features(pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        return outputs()

    inner.get_image_features = get_image_features
    try:
        yield
    finally:
        del inner.get_image_features


class _Host:
    """The host model at reduced depth with clocks on its layers."""

    def __init__(
        self, shapes: HostShapes, vision_layers: int, text_layers: int, dtype: torch.dtype, device: torch.device
    ):
        from transformers import InternVLForConditionalGeneration

        self.shapes = shapes
        cfg = host_config(shapes, vision_layers, text_layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = InternVLForConditionalGeneration(cfg).to(device=device, dtype=dtype).eval()
        # InternVL2's fine-tuning recipe freezes the vision encoder; projector and LLM train.
        self.model.model.vision_tower.requires_grad_(False)
        self.sync = _sync_for(device)
        inner = self.model.model
        self.vision_layers = list(inner.vision_tower.encoder.layer)
        self.text_layers = list(inner.language_model.layers)
        self.vclock = _Clock(self.vision_layers, self.sync)
        self.tclock = _Clock(self.text_layers, self.sync, backward=True)
        # image encoding = from entering the vision tower to leaving the projector
        self.enc_clock = _Span(inner.vision_tower, inner.multi_modal_projector, self.sync)

    def _missing(self) -> tuple[int, int]:
        return (
            self.shapes.vision_layers - len(self.vision_layers),
            self.shapes.text_layers - len(self.text_layers),
        )

    def _vlayer(self) -> float:
        return self.vclock.forward_s / len(self.vision_layers)

    def _tlayer(self) -> tuple[float, float]:
        n = len(self.text_layers)
        return self.tclock.forward_s / n, self.tclock.backward_s / n

    def _reset(self) -> None:
        self.vclock.reset()
        self.tclock.reset()
        self.enc_clock.reset()

    def prefill(self, inputs: dict[str, Any]) -> tuple[float, float]:
        """(image encoding, whole prefill) seconds, scaled to full depth."""
        self._reset()
        with torch.no_grad():
            total = _timed(
                lambda: self.model(
                    input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], logits_to_keep=1
                ),
                self.sync,
            )
        mv, mt = self._missing()
        vl, (tl, _) = self._vlayer(), self._tlayer()
        return self.enc_clock.seconds + mv * vl, total + mv * vl + mt * tl

    def train_step(self, inputs: dict[str, Any]) -> tuple[float, float]:
        """(image encoding forward + projector backward, whole training step: forward, loss on
        the answer tokens, backward) seconds, scaled to full depth."""
        self._reset()
        self.model.train()

        def step() -> None:
            logits = self.model(
                input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], logits_to_keep=inputs["keep"]
            ).logits[0]
            torch.nn.functional.cross_entropy(logits.float(), inputs["targets"]).backward()

        try:
            total = _timed(step, self.sync)
            self.enc_clock.finish_backward()
        finally:
            self.model.eval()
            self.model.zero_grad(set_to_none=True)
        mv, mt = self._missing()
        tf, tb = self._tlayer()
        vl = self._vlayer()
        encode = self.enc_clock.seconds + self.enc_clock.backward_s + mv * vl
        return encode, total + mv * vl + mt * (tf + tb)


class _Span:
    """Seconds from entering module ``first`` to leaving module ``last`` (summed over calls).

    With ``backward``, also the seconds of ``last``'s backward: from the gradient of its output
    being ready to the last of its parameters receiving its gradient.
    """

    def __init__(self, first: nn.Module, last: nn.Module, sync: Callable[[], None]):
        self.seconds = 0.0
        self.backward_s = 0.0
        self._start = 0.0
        self._bstart: float | None = None
        self._bend = 0.0
        self._sync = sync
        self._handles = [first.register_forward_pre_hook(self._pre), last.register_forward_hook(self._post)]
        self._handles += [
            p.register_post_accumulate_grad_hook(self._param_grad) for p in last.parameters() if p.requires_grad
        ]

    def reset(self) -> None:
        self.seconds = self.backward_s = 0.0
        self._bstart = None

    def finish_backward(self) -> None:
        """Close the backward span (call after ``backward()`` returned)."""
        if self._bstart is not None:
            self.backward_s += self._bend - self._bstart
            self._bstart = None

    def _now(self) -> float:
        self._sync()
        return time.perf_counter()

    def _pre(self, module: nn.Module, args: tuple) -> None:
        self._start = self._now()

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.seconds += self._now() - self._start
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._output_grad)

    def _output_grad(self, grad: torch.Tensor) -> None:
        self._bstart = self._bend = self._now()

    def _param_grad(self, param: torch.Tensor) -> None:
        self._bend = self._now()


def _gswa_times(
    host: _Host, cfg: GSWAConfig, inputs: dict[str, Any], inner_reps: int
) -> tuple[float, float, int]:
    """Mean seconds of GSWA's work at the seam per forward (no grad) and per forward + backward
    (GSWA trainable), and the number of tensor ops it dispatches per forward."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from gswa_plugin import api

    model, shapes = host.model, host.shapes
    views = inputs["pixel_values"].shape[0]
    ref = next(model.model.multi_modal_projector.parameters())
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(views, 1 + (shapes.image_size // shapes.patch_size) ** 2, shapes.vision_hidden, generator=gen)
    hidden = hidden.to(device=ref.device, dtype=ref.dtype)
    feats = torch.randn(views, shapes.tokens_per_tile, shapes.text_hidden, generator=gen).to(ref.device, ref.dtype)
    feats.requires_grad_(True)
    grad_out = torch.randn_like(feats)

    def outputs() -> Any:
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=feats)

    with _seam_stand_in(model, outputs):
        handle = api.enable(model, cfg)
        seam = model.model.get_image_features
        capture = text_capture(handle, model, inputs["input_ids"])

        def forward() -> torch.Tensor:
            handle.state["input_ids"] = inputs["input_ids"]
            capture()  # question-aware variants: the prompt's pooled embedding, as the forward's hook makes it
            return seam(pixel_values=inputs["pixel_values"]).pooler_output

        def train() -> None:
            torch.autograd.backward(forward(), grad_out)

        try:
            with torch.no_grad():
                forward()  # warm up
                with PeakMemory() as counter:
                    forward()
                fwd = _timed(lambda: [forward() for _ in range(inner_reps)], host.sync) / inner_reps
            handle.module.train()
            train()
            bwd = 0.0
            for _ in range(inner_reps):
                feats.grad = None
                handle.module.zero_grad(set_to_none=True)  # the text path reads the input table detached
                bwd += _timed(train, host.sync)
            bwd /= inner_reps
        finally:
            api.disable(model)
            feats.grad = None
    return fwd, bwd, counter.ops


def _peaks(host: _Host, cfg: GSWAConfig, inputs: dict[str, Any]) -> tuple[int, int, int, int]:
    """Peak live bytes of the image encoding and of the training step, without GSWA, and what
    enabling GSWA adds to each (at the depth that runs)."""
    from gswa_plugin import api

    model = host.model
    views = inputs["pixel_values"].shape[0]
    capture: list[Callable[[], None]] = [lambda: None]

    def encode() -> None:
        with torch.no_grad():
            capture[0]()  # a question-aware variant's pooled prompt, as the forward's hook makes it
            model.model.get_image_features(pixel_values=inputs["pixel_values"])

    def step() -> None:
        host.train_step(inputs)

    out = []
    for fn in (encode, step):
        peaks = []
        for with_gswa in (False, True):
            capture[0] = lambda: None
            if with_gswa:
                handle = api.enable(model, cfg)
                api.set_tiles(model, [views])
                capture[0] = text_capture(handle, model, inputs["input_ids"])
            try:
                with PeakMemory() as mem:
                    fn()
            finally:
                if with_gswa:
                    api.disable(model)
            peaks.append(mem.peak)
        out += [peaks[0], peaks[1] - peaks[0]]
    return tuple(out)  # type: ignore[return-value]


def run(
    shapes: HostShapes | str = "internvl2-2b",
    tiles: Sequence[int] = DEFAULT_TILES,
    repeats: int = 5,
    warmup: int = 1,
    vision_layers: int = 1,
    text_layers: int = 1,
    dtype: str = "bfloat16",
    device: str = "cpu",
    config: GSWAConfig | dict[str, Any] | str | None = None,
    inner_reps: int = 10,
    memory: bool = True,
    threads: int | None = None,
    progress: bool = True,
    prompt_tokens: int | None = None,
) -> BenchResult:
    """Measure GSWA's cost next to the host at each tile count (see the module docstring).

    Args:
        shapes: a [`HostShapes`][gswa_plugin.tools.bench.HostShapes] or a name in
            [`SHAPES`][gswa_plugin.tools.bench.SHAPES].
        tiles: tile counts; an image with more than one tile also gets a thumbnail, as InternVL's
            processor does.
        repeats: measured repeats per tile count (each gives one ratio).
        warmup: unmeasured passes at the first tile count before anything is measured.
        vision_layers: vision layers actually run (the rest are scaled in from the per-layer time).
        text_layers: language-model layers actually run.
        dtype: ``bfloat16`` (InternVL2's), ``float16`` or ``float32``.
        device: torch device.
        config: GSWA settings (default: [`GSWAConfig`][gswa_plugin.config.GSWAConfig] defaults).
        inner_reps: GSWA calls averaged within one repeat (GSWA is short; this steadies the clock).
        memory: also measure the peak memory added, at the largest tile count (the worst case;
            one extra pass, slowed down by the op-by-op tracking).
        threads: CPU threads for torch (default: torch's choice). On a shared machine one
            thread gives steadier ratios than several contending for cores.
        progress: show a progress bar.
        prompt_tokens: text tokens before the image (default: the shapes' ``prompt_tokens``, 32
            for the real sizes); the answer after it has ``answer_tokens`` (32). The question-aware
            variants pool the embeddings of every text token of the call.

    Raises:
        ConfigError: an argument is out of range.
    """
    from tqdm.auto import tqdm

    shapes = resolve_shapes(shapes, prompt_tokens)
    problems = []
    if not tiles or any(int(t) < 1 for t in tiles):
        problems.append(f"tile counts must be >= 1, got {list(tiles)}")
    if repeats < 1 or warmup < 0 or inner_reps < 1:
        problems.append(f"need repeats >= 1, warmup >= 0, inner_reps >= 1; got {repeats}, {warmup}, {inner_reps}")
    if not 1 <= vision_layers <= shapes.vision_layers or not 1 <= text_layers <= shapes.text_layers:
        problems.append(
            f"layers to run must be between 1 and the host's ({shapes.vision_layers} vision, "
            f"{shapes.text_layers} text); got {vision_layers}, {text_layers}"
        )
    if dtype not in ("bfloat16", "float16", "float32"):
        problems.append(f"dtype must be bfloat16, float16 or float32; got {dtype!r}")
    if problems:
        raise ConfigError(problems, "gswa bench")
    cfg = resolve_config(config)
    if threads is not None:
        torch.set_num_threads(int(threads))
    torch_dtype = getattr(torch, dtype)
    dev = torch.device(device)
    host = _Host(shapes, vision_layers, text_layers, torch_dtype, dev)
    from gswa_plugin import api

    handle = api.enable(host.model, cfg)
    gswa_params = count_parameters(handle.module)
    api.disable(host.model)
    result = BenchResult(
        shapes=shapes,
        gswa_config=cfg.to_dict(),
        dtype=dtype,
        device=str(dev),
        repeats=repeats,
        vision_layers_run=vision_layers,
        text_layers_run=text_layers,
        host_parameters=host_parameter_count(shapes),
        gswa_parameters=gswa_params,
        torch_threads=torch.get_num_threads(),
    )
    steps = warmup + len(tiles) * repeats + (1 if memory else 0)
    bar = tqdm(total=steps, desc="gswa bench", disable=not progress, unit="pass")
    for k, n in enumerate(tiles):
        views = int(n) + (1 if n > 1 else 0)
        inputs = _make_inputs(shapes, views, dev, torch_dtype, seed=int(n))
        row = TileResult(tiles=int(n), views=views, sequence_length=int(inputs["input_ids"].shape[1]))
        first = warmup if k == 0 else 0
        for i in range(first + repeats):
            bar.set_postfix(tiles=n, repeat=i - first + 1 if i >= first else "warmup")
            enc, prefill = host.prefill(inputs)
            train_enc, step = host.train_step(inputs)
            gswa_fwd, gswa_train, ops = _gswa_times(host, cfg, inputs, inner_reps)
            if i >= first:
                row.encode_s.append(enc)
                row.prefill_s.append(prefill)
                row.train_encode_s.append(train_enc)
                row.train_step_s.append(step)
                row.gswa_s.append(gswa_fwd)
                row.train_gswa_s.append(gswa_train)
                row.gswa_ops = ops
            bar.update()
        if memory and n == max(tiles):
            bar.set_postfix(tiles=n, repeat="memory")
            (
                row.peak_encode_bytes,
                row.peak_encode_added_bytes,
                row.peak_step_bytes,
                row.peak_step_added_bytes,
            ) = _peaks(host, cfg, inputs)
            bar.update()
        result.rows.append(row)
    bar.close()
    return result


# --- reporting ---------------------------------------------------------------------------------
def _pct(values: Sequence[float]) -> str:
    s = _spread(values)
    return f"{100 * s['median']:.3g}% [{100 * s['min']:.2g}–{100 * s['max']:.2g}]"


def _sec(values: Sequence[float]) -> str:
    m = statistics.median(values)
    return f"{m * 1e3:.3g} ms" if m < 1 else f"{m:.3g} s"


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / MIB:.3g} MiB"


def describe(result: BenchResult) -> list[str]:
    """The lines saying what was measured and how (printed above the tables)."""
    s = result.shapes
    lines = [
        f"Host: InternVLForConditionalGeneration at {s.name} shapes (vision width {s.vision_hidden}, "
        f"{s.vision_layers} layers, {s.image_size} px tiles, patch {s.patch_size}, {s.tokens_per_tile} tokens "
        f"per tile; projector {4 * s.vision_hidden} -> {s.text_hidden}; language model width {s.text_hidden}, "
        f"{s.text_layers} layers), random weights, {result.dtype} on {result.device} "
        f"({result.torch_threads} threads); prompt {s.prompt_tokens} text tokens before the image, "
        f"{s.answer_tokens} after it.",
        f"GSWA: variant {result.gswa_config['variant']}, hidden {result.gswa_config['hidden_size']}, "
        f"{result.gswa_config['num_layers']} block(s), {result.gswa_config['num_heads']} heads.",
        f"Ratios: median over {result.repeats} repeats, [min–max] in brackets; each repeat times host and "
        "GSWA one right after the other. Training: vision encoder frozen (InternVL2 fine-tuning), "
        "projector, language model and GSWA trainable; loss on the answer tokens.",
    ]
    if result.scaled:
        lines.append(
            f"Reduced depth, scaled: {result.vision_layers_run} of {s.vision_layers} vision layers and "
            f"{result.text_layers_run} of {s.text_layers} language layers ran; the other layers are added "
            "as that many times the measured per-layer time."
        )
    return lines


def _table(result: BenchResult, whole: str, training: bool) -> list[str]:
    """One markdown table: host times, GSWA's time and its ratios, memory added, per tile count."""
    pre = "train_" if training else ""
    host_whole = "train_step" if training else "prefill"
    out = [
        f"| tiles (+thumbnail) | image encoding | {whole} | GSWA | GSWA / image encoding | GSWA / {whole.split()[-1]} "
        "| peak memory added |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        ratios = r.ratios()
        added = r.peak_step_added_bytes if training else r.peak_encode_added_bytes
        out.append(
            f"| {r.tiles}{' + 1' if r.views > r.tiles else ''} | {_sec(getattr(r, pre + 'encode_s'))} | "
            f"{_sec(getattr(r, host_whole + '_s'))} | {_sec(getattr(r, pre + 'gswa_s'))} | "
            f"{_pct(ratios[pre + 'encode'])} | {_pct(ratios[host_whole])} | {_mib(added)} |"
        )
    return out


def markdown_tables(result: BenchResult) -> str:
    """The result as markdown: inference table, training table, parameters, targets."""
    out = ["Inference (prefill):", "", *_table(result, "whole prefill", training=False)]
    out += ["", "Training step (forward + backward):", "", *_table(result, "whole step", training=True)]
    ops = result.rows[-1].gswa_ops if result.rows else 0
    targets = result.targets()
    out += [
        "",
        f"Parameters: GSWA {result.gswa_parameters:,} / host {result.host_parameters:,} = "
        f"{100 * result.param_ratio:.3g}% (target < {100 * TARGET_PARAM_RATIO:g}%: "
        f"{'met' if targets['params'] else 'MISSED'}).",
        "",
        f"Time: worst GSWA / image-encoding ratio of any repeat = {100 * result.worst_encode_ratio():.3g}% "
        f"(target < {100 * TARGET_TIME_RATIO:g}% at every tile count: {'met' if targets['time'] else 'MISSED'}).",
        "",
        f"GSWA dispatches {ops} tensor ops per forward at {result.rows[-1].tiles if result.rows else 0} tiles. "
        "Peak memory added: peak of live tensor bytes with GSWA minus without, at the depth that ran, "
        "measured at the largest tile count"
        + "".join(
            f" (host peak there: image encoding {_mib(r.peak_encode_bytes)}, training step {_mib(r.peak_step_bytes)})"
            for r in result.rows
            if r.peak_step_bytes is not None
        )
        + ".",
    ]
    return "\n".join(out) + "\n"


def plot(result: BenchResult, path: str | Path) -> Path:
    """Save a plot of GSWA's time ratios against tile count (median, min-max bars, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = [r.tiles for r in result.rows]
    fig, ax = plt.subplots(figsize=(8.4, 4.0), dpi=120)
    labels = {
        "encode": "inference / image encoding",
        "prefill": "inference / whole prefill",
        "train_encode": "training / image encoding",
        "train_step": "training / whole step",
    }
    for key, label in labels.items():
        spreads = [_spread([100 * v for v in r.ratios()[key]]) for r in result.rows]
        med = [s["median"] for s in spreads]
        err = [[s["median"] - s["min"] for s in spreads], [s["max"] - s["median"] for s in spreads]]
        ax.errorbar(x, med, yerr=err, marker="o", capsize=3, label=label)
    ax.axhline(100 * TARGET_TIME_RATIO, color="red", linestyle="--", linewidth=1, label="target (1%)")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xlabel("tiles per image (+ thumbnail when > 1)")
    ax.set_ylabel("GSWA time / host time (%)")
    depth = "; depth scaled" if result.scaled else ""
    ax.set_title(f"GSWA overhead, {result.shapes.name} shapes ({result.dtype}, {result.device}{depth})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_json(result: BenchResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=1, default=float) + "\n", encoding="utf-8")
    return path


def load_json(path: str | Path) -> BenchResult:
    """A result saved by [`save_json`][gswa_plugin.tools.bench.save_json], to render its tables and plot again without
    measuring."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    names = {f.name for f in BenchResult.__dataclass_fields__.values()}
    row_names = set(TileResult.__dataclass_fields__)
    fields = {k: v for k, v in data.items() if k in names and k not in ("shapes", "rows")}
    result = BenchResult(**fields, shapes=HostShapes(**data["shapes"]))
    result.rows = [TileResult(**{k: v for k, v in row.items() if k in row_names}) for row in data["rows"]]
    return result


def is_finite(result: BenchResult) -> bool:
    """Whether every measured ratio is a positive finite number (a sanity check for tests)."""
    return all(
        math.isfinite(v) and v > 0 for r in result.rows for values in r.ratios().values() for v in values
    )
