"""Hook specifications: the whole plugin surface of gswa-plugin, in one module.

gswa-plugin is a pluggy project named ``gswa``; every hook is named ``gswa_*``. The built-in
adapters and weighting variants register through these same hooks. Third-party plugins are
modules or objects exposed through the entry-point group ``gswa``::

    # pyproject.toml of a plugin package
    [project.entry-points.gswa]
    my_plugin = "my_package.gswa_hooks"

An implementation may accept fewer arguments than its specification, so hooks can grow
arguments without breaking plugins. Wrappers use pluggy's new style (``wrapper=True``).
"""

from __future__ import annotations

from typing import Callable

import pluggy
import torch

from gswa_plugin.adapters._base import Adapter
from gswa_plugin.handle import GSWAHandle
from gswa_plugin.layout import TileBatch
from gswa_plugin.weighting import VariantFactory

#: Marks a function as a hook specification of the ``gswa`` project.
hookspec = pluggy.HookspecMarker("gswa")
#: Marks a function as an implementation of a ``gswa`` hook (use it in plugins).
hookimpl = pluggy.HookimplMarker("gswa")


@hookspec
def gswa_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Register host adapters.

    Call ``register(adapter)`` once per [`Adapter`][gswa_plugin.adapters._base.Adapter] instance. An
    adapter's ``name`` must be unique across all plugins.

    :param register: callback taking one adapter instance.
    :return: ignored.
    """


@hookspec
def gswa_register_variants(register: Callable[[str, VariantFactory], None]) -> None:
    """Register weighting variants.

    Call ``register(name, factory)``; ``factory(summary_dim, config)`` returns an
    ``nn.Module`` whose ``forward(tokens, tile_mask)`` maps padded summaries
    ``[images, 1 + T, D]`` (thumbnail in slot 0) and a tile mask ``[images, T]`` to attention
    logits ``[images, T]`` or ``[images, heads, T]``. The name becomes a valid ``variant:``.

    :param register: callback taking a name and a factory.
    :return: ignored.
    """


@hookspec(firstresult=True)
def gswa_process_tiles(batch: TileBatch, handle: GSWAHandle) -> TileBatch | None:
    """Compute the tile weights of one forward and apply them to the features.

    Called once per forward at the seam between the vision encoder and the language model, with
    the tile batch of every image in the forward. The built-in implementation (registered
    ``trylast``) computes ``batch.weights`` with the model's GSWA module and scales
    ``batch.features``. Wrap it (``@hookimpl(wrapper=True)``) to observe or modify the batch on
    the way in (features, summaries, layout) and the weighted batch on the way out.

    Stops at first non-None result.

    :param batch: the [`TileBatch`][gswa_plugin.layout.TileBatch] of this forward.
    :param handle: the model's [`GSWAHandle`][gswa_plugin.handle.GSWAHandle] (model, config, module).
    :return: the processed batch, or ``None`` to let the next implementation handle it.
    """


@hookspec
def gswa_weights_computed(weights: list[torch.Tensor], batch: TileBatch, handle: GSWAHandle) -> None:
    """Report the weights of a forward once they are computed (for logging and pictures).

    :param weights: per image, the weights of its tiles (thumbnail excluded), detached.
    :param batch: the processed [`TileBatch`][gswa_plugin.layout.TileBatch] (``batch.weights`` holds
        every view's weight, thumbnail included).
    :param handle: the model's [`GSWAHandle`][gswa_plugin.handle.GSWAHandle].
    :return: ignored.
    """


#: Names of all hooks, for docs and meta-tests.
HOOK_NAMES: tuple[str, ...] = tuple(name for name in dir() if name.startswith("gswa_"))

