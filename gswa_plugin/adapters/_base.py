"""What every host adapter implements, and the patching helpers they share.

An adapter knows one host family: how to recognise it, where its seam between vision encoder
and language model is, how its views are laid out, and where a per-view summary comes from.
It hands the seam's features to [`GSWAHandle.process`][gswa_plugin.handle.GSWAHandle.process]
and puts the weighted features back; the GSWA math never sees host code.
"""

from __future__ import annotations

import abc
import functools
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from gswa_plugin.errors import MissingModuleError

if TYPE_CHECKING:  # pragma: no cover
    from gswa_plugin.config import GSWAConfig
    from gswa_plugin.handle import GSWAHandle


class Adapter(abc.ABC):
    """Base class of host adapters. Subclass it and register an instance through
    ``gswa_register_adapters``.

    Attributes:
        name: unique name, used by ``adapter:`` in the config and shown by ``gswa adapters``.
        description: one line on the host classes it supports.
        global_position: where the thumbnail sits among an image's views
            (``"first"``, ``"last"`` or ``"none"``).
        has_cls: whether the host's vision encoder has a CLS token (``summary: auto`` uses it).
        auto_match: whether ``enable()`` may pick this adapter when the config names none
            (``False`` for adapters used only when named, such as ``declarative``).
    """

    name: str = ""
    description: str = ""
    global_position: str = "last"
    has_cls: bool = True
    auto_match: bool = True

    @abc.abstractmethod
    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter handles ``model`` (checked by ``enable()`` when no adapter is named)."""

    def required_modules(self, model: nn.Module) -> dict[str, Any]:
        """Modules and methods the adapter needs, by dotted path; missing ones raise
        [`MissingModuleError`][gswa_plugin.errors.MissingModuleError] before anything is patched."""
        return {}

    @abc.abstractmethod
    def summary_dim(self, model: nn.Module, config: GSWAConfig) -> int:
        """Width of the per-view summaries this adapter will hand to GSWA."""

    def reference_parameter(self, model: nn.Module) -> torch.Tensor:
        """A parameter whose dtype and device GSWA should follow (default: the model's first)."""
        return next(p for p in model.parameters() if p.is_floating_point())

    @abc.abstractmethod
    def install(self, model: nn.Module, handle: GSWAHandle) -> None:
        """Patch the seam. Register every undo step with ``handle.add_undo``."""

    def language_model(self, model: nn.Module) -> nn.Module | None:
        """The language model's decoder stack (whose ``layers[i].self_attn`` the ``value`` and
        ``attn_bias`` modes hook), or ``None`` where this adapter supports only ``mode: embed``."""
        return None

    def position_weights(self, model: nn.Module, handle: GSWAHandle, seq_len: int) -> torch.Tensor | None:
        """Weight of every position of the language-model call in progress, ``[batch, seq_len]``.

        Called by the ``value``/``attn_bias`` modes at the start of each language-model call: a
        position holding view ``v``'s tokens gets ``handle.last_batch.weights[v]``, text gets 1.
        Return ``None`` when the call holds no image position. Adapters that implement
        ``language_model`` implement this too (see
        [`gswa_plugin.apply.placeholder_position_weights`][gswa_plugin.apply.placeholder_position_weights] for
        placeholder-token hosts).
        """
        return None

    #: Added to the "cannot tell how the tiles split into images" error: what to configure so
    #: that the adapter can read the grouping itself (e.g. the declarative ``declare.tiles_from``).
    grouping_hint: str = ""

    def seam_not_run(self, handle: GSWAHandle) -> str:
        """The error message when a forward carried images but GSWA never ran on them (its
        seam was not on the host's code path): what to fix, naming the setting. Adapters whose
        seam the user chooses override it."""
        return (
            f"the model was called with images but the '{self.name}' adapter's seam never ran, so GSWA did not "
            "weight anything: this host's code path differs from the one the adapter patches (another "
            "transformers version, or a modified model class?). Pick the matching adapter with `adapter:` "
            "(see `gswa adapters`) or describe the seam with `adapter: declarative` (docs page 'Adapters')"
        )

    def use_cls(self, config: GSWAConfig) -> bool:
        """Whether summaries are CLS tokens (else the mean of the view's tokens)."""
        if config.summary == "auto":
            return self.has_cls
        return config.summary == "cls"

    def check(self, model: nn.Module) -> None:
        """Raise [`MissingModuleError`][gswa_plugin.errors.MissingModuleError] naming every module or method the model
        lacks."""
        missing = [path for path in self.required_modules(model) if resolve_path(model, path) is None]
        if missing:
            raise MissingModuleError(
                f"{type(model).__name__} looks like a '{self.name}' model but lacks "
                f"{', '.join(f'`{m}`' for m in missing)}, which the '{self.name}' adapter needs. "
                "If the model is a modified variant, describe its seam with a declarative adapter "
                "or pass `adapter:` naming the right one (see `gswa adapters`)."
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def resolve_path(root: Any, dotted: str) -> Any:
    """Follow a dotted attribute path (``"model.vision_tower"``); ``None`` where it breaks."""
    obj = root
    for part in dotted.split(".") if dotted else []:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def model_type(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None)


def patch_method(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Replace ``owner.name`` on this instance only, keeping its signature; returns the undo.

    ``generate()`` picks arguments by reading the signature of the image-feature method, so the
    wrapper carries ``functools.wraps`` of the original bound method. Undo deletes the instance
    attribute, so the class method is visible again exactly as before.
    """
    had_instance_attr = name in vars(owner)
    previous = vars(owner).get(name)
    original = getattr(owner, name)
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(owner, name, wrapper)

    def undo() -> None:
        if had_instance_attr:
            setattr(owner, name, previous)
        else:
            try:
                delattr(owner, name)
            except AttributeError:
                pass

    return undo


def summarise(hidden: torch.Tensor, use_cls: bool, has_cls: bool) -> torch.Tensor:
    """Per-view summary from encoder tokens ``[views, tokens, dim]``: the CLS token or the mean
    of the patch tokens (CLS excluded where present)."""
    if use_cls:
        return hidden[:, 0]
    tokens = hidden[:, 1:] if has_cls else hidden
    return tokens.mean(dim=1)


def wants_tuple(owner: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a host method decorated with transformers' ``can_return_tuple`` (e.g.
    ``get_image_features``) would return a tuple for this call: ``return_dict=False`` passed, or
    not passed (or ``None``) while the owner's ``config.return_dict`` is false. A seam wrapper
    that calls the original with ``return_dict=True`` converts back in that case."""
    passed = kwargs.get("return_dict")
    if passed is not None:
        return not passed
    return not getattr(getattr(owner, "config", None), "return_dict", True)


def _input_ids_from_call(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
    ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
    return ids if isinstance(ids, torch.Tensor) and not ids.is_floating_point() else None


def install_input_ids_capture(model: nn.Module, inner: nn.Module, handle: Any) -> None:
    """Keep the ``input_ids`` of the current call in ``handle.state['input_ids']`` for layout
    inference: a pre-hook on the inner forward, and a wrapper around ``generate()``. Shared by
    adapters of hosts whose tiles per image are only visible in ``input_ids``."""

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = _input_ids_from_call(args, kwargs)
        if ids is not None:
            handle.state["input_ids"] = ids
            handle.prefetch_ids(ids)  # the forward's one device-to-host read, started early
        # Kept for the whole call (application modes), only when the call brings images (pixel
        # values, or features generate() encoded before its first step): a generated token that
        # happens to be the image token is text.
        encoded = kwargs.get("mm_encoder_outputs")
        if isinstance(encoded, dict):
            encoded = encoded.get("image")
        has_images = kwargs.get("pixel_values") is not None or encoded is not None
        handle.state["call_input_ids"] = ids if has_images else None

    def post_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        handle.state.pop("input_ids", None)
        handle.state.pop("call_input_ids", None)
        handle.state.pop("host_ids", None)
        handle.state.pop("image_slots", None)

    h1 = inner.register_forward_pre_hook(pre_hook, with_kwargs=True)
    h2 = inner.register_forward_hook(post_hook, with_kwargs=True)
    handle.add_undo(h1.remove)
    handle.add_undo(h2.remove)

    if hasattr(model, "generate"):

        def make_generate(original: Callable) -> Callable:
            def generate(*args: Any, **kwargs: Any) -> Any:
                ids = _input_ids_from_call(args, kwargs)
                if ids is None:
                    ids = kwargs.get("inputs")
                handle.state["input_ids"] = ids
                if isinstance(ids, torch.Tensor):
                    handle.prefetch_ids(ids)
                try:
                    return original(*args, **kwargs)
                finally:
                    handle.state.pop("input_ids", None)

            return generate

        handle.add_undo(patch_method(model, "generate", make_generate))
