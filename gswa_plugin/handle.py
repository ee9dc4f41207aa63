"""The handle: what links one model, its adapter, its config and its GSWA module.

``enable()`` (in [`gswa_plugin.api`][gswa_plugin.api]) builds the handle and stores it on the model; adapters
and application modes receive it. The handle runs the ``gswa_process_tiles`` hook through the
hook caller it was given, so nothing below the plugin manager needs to know about plugins.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from gswa_plugin._host import HostArray
from gswa_plugin.config import GSWAConfig
from gswa_plugin.errors import LayoutError, NotEnabledError
from gswa_plugin.layout import TileBatch, TileLayout, image_slots, prepare_indices
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
        last_budget: with a token budget, the [`BudgetPlan`][gswa_plugin.adapters._budget.BudgetPlan]
            of the latest call (what was kept, the shortened ``input_ids``); ``None`` before.
    """

    def __init__(self, model: nn.Module, config: GSWAConfig, adapter: Any, module: GSWAModule, hook: Any):
        self.model = model
        self.hook = hook  # the plugin manager's hook caller (``pm.hook``)
        self.config = config
        self.adapter = adapter
        self.module = module
        self.views_override: tuple[int, ...] | None = None
        self.last_budget: Any = None
        #: Set once a call carrying images has had GSWA run on them (see ``api._install_seam_watch``).
        self.seam_verified = False
        self._undo: list[Callable[[], None]] = []
        # What one forward needs (captured input_ids, the processed batch, the modes' position
        # weights) is kept per thread: a call runs on one thread from the seam to the language
        # model, so calls on other threads never see it. ``latest_batch`` is the newest batch of
        # any thread, for ``last_weights`` read from another thread than the forward's.
        self._local = threading.local()
        self._latest_batch: TileBatch | None = None
        self._aux_warned = False

    @property
    def config(self) -> GSWAConfig:
        """The [`GSWAConfig`][gswa_plugin.config.GSWAConfig] in force."""
        return self._config

    @config.setter
    def config(self, config: GSWAConfig) -> None:
        self._config = config
        # a plain float for the seam's check: reading a pydantic field there breaks torch.compile's graph
        self._distinct_weight = float(config.distinct_weight)

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
        if getattr(self.module, "uses_text", False) and "text" not in extra:
            extra["text"] = self.text_per_image(layout)
        batch = TileBatch(features=features, summaries=summaries, layout=layout, extra=dict(extra))
        result = self.hook.gswa_process_tiles(batch=batch, handle=self)
        if result is None:
            raise RuntimeError("no gswa_process_tiles implementation returned a batch")  # pragma: no cover
        self.last_batch = result
        self.hook.gswa_weights_computed(weights=result.tile_weights(), batch=result, handle=self)
        return result.features

    # training terms of GSWA's own (``distinct_weight``), collected by ``gswa_plugin.aux_loss`` -----
    def add_aux(self, term: torch.Tensor) -> None:
        """Keep a training term of this thread's forward for ``gswa_plugin.aux_loss`` (summed with
        the others of the same model call)."""
        call = self.state.get("model_calls", 0)
        pending = getattr(self._local, "aux", None)
        if pending is not None and pending[0] != call:
            # the previous training call's term was never added to a loss: say so once, drop it
            if not self._aux_warned:
                self._aux_warned = True
                warnings.warn(
                    f"GSWA's `distinct_weight` is {self.config.distinct_weight}, but the term of the previous "
                    "training call was never collected, so it trains nothing: add `gswa_plugin.aux_loss(model)` "
                    "to the loss after each forward (the transformers GSWATrainer does it), or set "
                    "`distinct_weight: 0`",
                    UserWarning,
                    stacklevel=3,
                )
            pending = None
        self._local.aux = (call, term if pending is None else pending[1] + term)

    def pop_aux(self) -> torch.Tensor | None:
        """The training terms of this thread's forwards since the last call (then cleared), or ``None``."""
        pending = getattr(self._local, "aux", None)
        self._local.aux = None
        return None if pending is None else pending[1]

    def text_per_image(self, layout: TileLayout) -> torch.Tensor | None:
        """For the question-aware variants: the pooled text of the call (kept in
        ``state['text']``, one row per sample) as one row per image ``[images, dim]``.

        Each sample's row goes to its image when the call has one image per sample, or to every
        image of a single sample. Without text (e.g. a direct image-feature call) an identity
        GSWA, whose weights are 1 for any text, gets ``None`` and no error; any other raises."""
        text = self.state.get("text")
        if text is None:
            if self.module.is_identity():
                return None
            raise LayoutError(
                f"the question-aware variant '{self.config.variant}' weighs tiles by the request's text, but this "
                f"call to the '{self.adapter.name}' seam carries no `input_ids` (e.g. a direct image-feature call, "
                "or `inputs_embeds` instead of `input_ids`): call the model or `generate()` with `input_ids`, or "
                "use an image-only variant (`self_attn`, `cross_attn`, `cosine`)"
            )
        n = layout.num_images
        if text.shape[0] == n:
            return text
        if text.shape[0] == 1:
            return text.expand(n, -1)
        raise LayoutError(
            f"the question-aware variant '{self.config.variant}' needs one image per sample (or a single "
            f"sample), but this call has {text.shape[0]} samples and {n} images; split the batch so that "
            "each sample carries one image"
        )

    def host_ids(self, ids: torch.Tensor) -> np.ndarray:
        """``ids`` on the host as a numpy array, copied once per tensor: the seam's layout and the
        modes' image positions of one forward share a single device-to-host read (see
        ``gswa_plugin._host``)."""
        cached = self.state.get("host_ids")
        if cached is None or cached[0].source is not ids or cached[1] != ids._version:
            cached = self.state["host_ids"] = (HostArray(ids), ids._version)
        return cached[0].numpy()

    def prefetch_ids(self, ids: torch.Tensor | None) -> None:
        """Start the host copy of a forward's ``input_ids`` as soon as the forward receives them."""
        if ids is not None:
            self._prefetch(ids)

    @torch.compiler.disable
    def _prefetch(self, ids: torch.Tensor) -> None:
        cached = self.state.get("host_ids")
        if cached is None or cached[0].source is not ids or cached[1] != ids._version:
            self.state["host_ids"] = (HostArray(ids), ids._version)

    @torch.compiler.disable
    def layout_from_ids(
        self,
        n_views: int,
        ids: torch.Tensor | None,
        count: Callable[[np.ndarray], Sequence[int]],
        device: torch.device | None = None,
        image_token: int | None = None,
        tokens_per_view: int = 1,
    ) -> TileLayout:
        """[`layout_for`][gswa_plugin.handle.GSWAHandle.layout_for] with the counts read off ``ids``
        by ``count`` (which receives their host copy), and the layout's device indices prepared:
        everything the seam needs from the host, in one step hidden from ``torch.compile``.

        With ``image_token`` (placeholder hosts, ``value``/``attn_bias`` modes), the image positions
        of ``ids`` are indexed too ([`image_slots`][gswa_plugin.layout.image_slots]) and kept for the
        language-model call of the same ``ids`` ([`cached_slots`][gswa_plugin.handle.GSWAHandle.cached_slots]),
        so the modes need no second host step."""
        counts = None if ids is None else count(self.host_ids(ids))
        layout = self.layout_for(n_views, counts)
        if device is not None:
            prepare_indices(layout, device)
        self.state.pop("image_slots", None)
        if ids is not None and image_token is not None and self.config.mode != "embed":
            from gswa_plugin.errors import LayoutError as _LayoutError

            try:  # a mismatch (e.g. rows repeated later by beam search) is settled by the call itself
                slots = image_slots(ids, image_token, n_views, device or ids.device, tokens_per_view, handle=self)
            except _LayoutError:
                pass
            else:
                self.state["image_slots"] = (ids, slots)
        return layout

    def cached_slots(self, ids: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
        """``(found, slots)``: the image-position index the seam prepared for exactly ``ids``
        (see [`layout_from_ids`][gswa_plugin.handle.GSWAHandle.layout_from_ids])."""
        cached = self.state.get("image_slots")
        if cached is not None and cached[0] is ids:
            return True, cached[1]
        return False, None

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
