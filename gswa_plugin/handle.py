"""The handle: what links one model, its adapter, its config and its GSWA module.

``enable()`` (in [`gswa_plugin.api`][gswa_plugin.api]) builds the handle and stores it on the model; adapters
and application modes receive it. The handle runs the ``gswa_process_tiles`` hook through the
hook caller it was given, so nothing below the plugin manager needs to know about plugins.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import torch
from torch import nn

from gswa_plugin.config import GSWAConfig
from gswa_plugin.errors import LayoutError, NotEnabledError
from gswa_plugin.layout import TileBatch, TileLayout
from gswa_plugin.weighting import GSWAModule

#: Attribute of the model holding GSWA's parameters (hence the ``gswa.`` prefix of their names).
MODULE_ATTR = "gswa"
HANDLE_ATTR = "_gswa_handle"


class GSWAHandle:
    """What ``enable()`` returns: the link between a model, its adapter and its GSWA module.

    Attributes:
        model: the host model.
        config: the [`GSWAConfig`][gswa_plugin.config.GSWAConfig] in force.
        adapter: the [`Adapter`][gswa_plugin.adapters._base.Adapter] patching the host.
        module: the [`GSWAModule`][gswa_plugin.weighting.GSWAModule] (also ``model.gswa``).
        last_batch: the processed [`TileBatch`][gswa_plugin.layout.TileBatch] of the latest forward
            on the calling thread (or, if it ran none, of any thread).
        state: per-thread scratch space of the forward in progress (adapters, modes).
    """

    def __init__(self, model: nn.Module, config: GSWAConfig, adapter: Any, module: GSWAModule, hook: Any):
        self.model = model
        self.hook = hook  # the plugin manager's hook caller (``pm.hook``)
        self.config = config
        self.adapter = adapter
        self.module = module
        self.views_override: tuple[int, ...] | None = None
        #: Set once a call carrying images has had GSWA run on them (see ``api._install_seam_watch``).
        self.seam_verified = False
        self._undo: list[Callable[[], None]] = []
        # What one forward needs (captured input_ids, the processed batch, the modes' position
        # weights) is kept per thread: a call runs on one thread from the seam to the language
        # model, so calls on other threads never see it. ``latest_batch`` is the newest batch of
        # any thread, for ``last_weights`` read from another thread than the forward's.
        self._local = threading.local()
        self._latest_batch: TileBatch | None = None

    @property
    def state(self) -> dict[str, Any]:
        """Scratch space of the forward in progress on this thread (adapters and modes)."""
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = {}
        return state

    @property
    def last_batch(self) -> TileBatch | None:
        """The processed batch of this thread's latest forward (else the latest of any thread)."""
        batch = getattr(self._local, "batch", None)
        return batch if batch is not None else self._latest_batch

    @last_batch.setter
    def last_batch(self, batch: TileBatch | None) -> None:
        self._local.batch = batch
        self._latest_batch = batch

    def add_undo(self, fn: Callable[[], None]) -> None:
        """Register a step that ``disable()`` runs (in reverse order of registration)."""
        self._undo.append(fn)

    def mark_installed(self) -> None:
        """Mark where the patches of the model start (``uninstall`` goes back to here)."""
        self._installed_at = len(self._undo)

    def uninstall(self) -> None:
        """Undo the patches and hooks registered since ``mark_installed`` (the module stays)."""
        while len(self._undo) > getattr(self, "_installed_at", 0):
            self._undo.pop()()

    def process(
        self, features: torch.Tensor, summaries: torch.Tensor, layout: TileLayout, **extra: Any
    ) -> torch.Tensor:
        """Run the ``gswa_process_tiles`` hook on one forward's tiles; returns the weighted features."""
        self.state["process_calls"] = self.state.get("process_calls", 0) + 1
        batch = TileBatch(features=features, summaries=summaries, layout=layout, extra=dict(extra))
        result = self.hook.gswa_process_tiles(batch=batch, handle=self)
        if result is None:
            raise RuntimeError("no gswa_process_tiles implementation returned a batch")  # pragma: no cover
        self.last_batch = result
        self.hook.gswa_weights_computed(weights=result.tile_weights(), batch=result, handle=self)
        return result.features

    def layout_for(self, n_views: int, counts_from_ids: Sequence[int] | None) -> TileLayout:
        """The layout of ``n_views`` views: an explicit ``set_tiles()`` override, else counts the
        adapter read off ``input_ids``, else a single image with a single view."""
        source = "set_tiles()"
        counts = self.views_override
        if counts is None and counts_from_ids is not None:
            counts, source = tuple(int(c) for c in counts_from_ids), "the image tokens in input_ids"
        if counts is None:
            if n_views == 1:
                counts = (1,)
            elif self.module.is_identity():
                # e.g. a direct `get_image_features(pixel_values)`: the grouping is unknown, but
                # an identity GSWA gives every view weight 1 under any grouping, so the answer is
                # exact; each view is taken as its own image.
                counts = (1,) * n_views
            else:
                hint = getattr(self.adapter, "grouping_hint", "")
                raise LayoutError(
                    f"{n_views} tiles reached the '{self.adapter.name}' seam but GSWA cannot tell how they "
                    "split into images (this happens when the image-feature method is called directly, without "
                    "the call's `input_ids`): call the model with `input_ids` (so the image tokens can be counted), "
                    "or wrap the call in `with gswa_plugin.tiles(model, [views of image 1, views of image 2, ...]):`"
                    + (f"; {hint}" if hint else "")
                )
        if sum(counts) != n_views:
            raise LayoutError(
                f"{source} describe{'s' if source.startswith('set') else ''} {sum(counts)} tiles "
                f"({list(counts)} per image) but {n_views} reached the '{self.adapter.name}' seam; "
                "check the processor's tiling or the counts given to `gswa_plugin.set_tiles`"
            )
        return TileLayout(tuple(counts), self.adapter.global_position)

    def undo_all(self) -> None:
        """Run every registered undo step, newest first (what ``disable()`` does)."""
        while self._undo:
            self._undo.pop()()


def get_handle(model: nn.Module) -> GSWAHandle:
    """The handle of a model with GSWA enabled."""
    handle = getattr(model, HANDLE_ATTR, None)
    if handle is None:
        raise NotEnabledError(
            f"GSWA is not enabled on this {type(model).__name__}; call `gswa_plugin.enable(model, config)` first"
        )
    return handle


def attach(model: nn.Module, handle: GSWAHandle) -> None:
    """Store ``handle`` on ``model`` (as a plain attribute: the handle is not a submodule)."""
    object.__setattr__(model, HANDLE_ATTR, handle)


def detach(model: nn.Module) -> None:
    """Remove the handle stored on ``model``."""
    object.__delattr__(model, HANDLE_ATTR)


def is_enabled(model: nn.Module) -> bool:
    return getattr(model, HANDLE_ATTR, None) is not None
