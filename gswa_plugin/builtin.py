"""The built-in plugin: the paper's weighting variants and the default tile processing.

It is registered like a third-party plugin, through the hooks in [`gswa_plugin.hookspecs`][gswa_plugin.hookspecs].
"""

from __future__ import annotations

from typing import Any, Callable

from gswa_plugin.apply import apply_weights
from gswa_plugin.hookspecs import hookimpl
from gswa_plugin.layout import TileBatch
from gswa_plugin.weighting import BUILTIN_VARIANTS, TEXT_VARIANTS


@hookimpl
def gswa_register_variants(register: Callable[[str, Any], None]) -> None:
    for name, factory in {**BUILTIN_VARIANTS, **TEXT_VARIANTS}.items():
        register(name, factory)


@hookimpl(trylast=True)
def gswa_process_tiles(batch: TileBatch, handle: Any) -> TileBatch:
    """Default processing: weights from the model's GSWA module, then (``embed`` mode) scale the features."""
    batch.weights, batch.features = _weigh(handle.module, batch, handle.config.mode == "embed")
    return batch


def _weigh(module: Any, batch: TileBatch, embed: bool) -> tuple[Any, Any]:
    # one function for both steps: torch.compile (which does not trace pluggy's dispatch) compiles
    # it as one graph instead of two
    # only a question-aware module is given the prompt: a module that stands in for GSWA (the
    # influence tool's fixed weights, a plugin's own) keeps the (summaries, layout) call
    if getattr(module, "uses_text", False):
        weights = module(batch.summaries, batch.layout, text=batch.extra.get("text"))
    else:
        weights = module(batch.summaries, batch.layout)
    # the `embed` mode scales the features; the other modes act inside the language model (gswa_plugin.apply)
    return weights, apply_weights(batch.features, weights) if embed else batch.features
