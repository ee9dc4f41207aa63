"""The built-in plugin: the paper's weighting variants and the default tile processing.

It is registered like a third-party plugin, through the hooks in [`gswa_plugin.hookspecs`][gswa_plugin.hookspecs].
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from gswa_plugin.apply import apply_weights
from gswa_plugin.hookspecs import hookimpl
from gswa_plugin.layout import TileBatch
from gswa_plugin.weighting import BUILTIN_VARIANTS, TEXT_VARIANTS, distinct_term


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


@hookimpl
def gswa_weights_computed(weights: Any, batch: TileBatch, handle: Any) -> None:
    """The ``distinct_weight`` term of a training forward, kept for ``gswa_plugin.aux_loss``. Here
    rather than in the seam's own code: pluggy's dispatch is not traced by torch.compile, so the
    check adds no graph break to a compiled forward (measured: one more in the seam)."""
    w = handle._distinct_weight
    if w and torch.is_grad_enabled() and handle.module.training:
        term = distinct_term(handle.module, batch.summaries, batch.layout, handle.config.distinct_temperature,
                             batch.extra.get("text"))
        handle.add_aux(w * term)
