"""A pytest plugin that runs transformers' own model tests with GSWA enabled on every model they build.

transformers' test files are not installed with its wheel: take ``tests/`` from the transformers
source of the installed version (see ``scripts/transformers_model_tests.sh``), then::

    GSWA_HF_SUITE_MODE=value python -m pytest -p gswa_plugin.testing.hf_suite \\
        TRANSFORMERS_TESTS_DIR/tests/models/internvl/test_modeling_internvl.py -q -rfE

While the plugin is loaded, the ``__init__`` of every ``PreTrainedModel`` class defined in the
``modeling_*`` module of a supported family (``transformers.models.internvl.modeling_internvl``
and so on) is wrapped. When the outermost such ``__init__`` returns (so an
``InternVLForConditionalGeneration`` gets GSWA once, not also its inner ``InternVLModel``), the
plugin calls ``gswa_plugin.enable(model, {"mode": MODE, ...})`` if a registered adapter matches
the model; a model no adapter matches (a vision tower built alone, say) is left alone. Models
built by ``from_config`` and ``_from_config`` go through ``__init__`` too. ``from_pretrained``
builds the model on the meta device first, where ``enable()`` refuses (GSWA's parameters would
be filled by the host's ``_init_weights``), so ``PreTrainedModel.from_pretrained`` is wrapped as
well and such a model gets GSWA when it returns, weights loaded, as a user would enable it.
GSWA keeps its identity initialisation, so every output should equal the plain model's; the
tests that still fail are either ones a plugin that adds parameters cannot pass (see the docs
page 'transformers' model tests') or GSWA bugs.

Settings (environment variables):

- ``GSWA_HF_SUITE_MODE``: ``embed``, ``value`` (default) or ``attn_bias``.
- ``GSWA_HF_SUITE_CONFIG``: a JSON object merged into the GSWA config (e.g. ``{"variant": "cosine"}``).
- ``GSWA_HF_SUITE_FAMILIES``: comma-separated transformers model folders to wrap (default: the
  families of the built-in adapters, [`FAMILIES`][gswa_plugin.testing.hf_suite.FAMILIES]).
- ``GSWA_HF_SUITE_DISABLE=1``: load the plugin but wrap nothing (a baseline run with the same
  command line).

At the end of the run the terminal summary says how many models of each class got GSWA and how
many were left alone, so a run where nothing was enabled is visible.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import threading
from collections import Counter
from typing import Any

from gswa_plugin.api import enable, find_adapter
from gswa_plugin.config import MODES
from gswa_plugin.errors import AdapterNotFoundError
from gswa_plugin.handle import is_enabled

#: transformers model folders whose ``modeling_<name>`` classes are wrapped by default: the
#: families of the built-in adapters (``got_ocr2`` is supported only through a declarative config).
FAMILIES: tuple[str, ...] = ("internvl", "llava_next", "llava_onevision", "idefics3", "smolvlm", "aya_vision")

MODE_ENV = "GSWA_HF_SUITE_MODE"
CONFIG_ENV = "GSWA_HF_SUITE_CONFIG"
FAMILIES_ENV = "GSWA_HF_SUITE_FAMILIES"
DISABLE_ENV = "GSWA_HF_SUITE_DISABLE"

_local = threading.local()
_originals: list[tuple[type, Any]] = []
enabled_counts: Counter[str] = Counter()
skipped_counts: Counter[str] = Counter()


def gswa_config() -> dict[str, Any]:
    """The GSWA config the plugin enables with: ``{"mode": ...}`` plus ``GSWA_HF_SUITE_CONFIG``."""
    mode = os.environ.get(MODE_ENV, "value")
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    cfg: dict[str, Any] = {"mode": mode}
    extra = os.environ.get(CONFIG_ENV)
    if extra:
        cfg.update(json.loads(extra))
    return cfg


def families() -> list[str]:
    raw = os.environ.get(FAMILIES_ENV)
    return [f.strip() for f in raw.split(",") if f.strip()] if raw else list(FAMILIES)


def model_classes(family: str) -> list[type]:
    """The ``PreTrainedModel`` classes defined in ``transformers.models.<family>.modeling_<family>``."""
    from transformers import PreTrainedModel

    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, PreTrainedModel) and obj.__module__ == module.__name__
    ]


def _on_meta(model: Any) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


def _after_construction(model: Any) -> None:
    name = type(model).__name__
    if is_enabled(model) or _on_meta(model):  # built by from_pretrained: enabled when it returns
        return
    try:
        find_adapter(model)
    except AdapterNotFoundError:
        skipped_counts[name] += 1
        return
    enable(model, gswa_config())  # anything else it raises fails the test: that is a finding
    enabled_counts[name] += 1


def _wrap(cls: type) -> None:
    original = cls.__dict__["__init__"]

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        depth = getattr(_local, "depth", 0)
        _local.depth = depth + 1
        try:
            original(self, *args, **kwargs)
        finally:
            _local.depth = depth
        if depth == 0:  # the outermost model of a wrapped family, fully built
            _after_construction(self)

    cls.__init__ = __init__  # type: ignore[misc]
    _originals.append((cls, original))


def _wrap_from_pretrained(wrapped: tuple[type, ...]) -> None:
    from transformers import PreTrainedModel

    original = PreTrainedModel.__dict__["from_pretrained"]

    def from_pretrained(cls: type, *args: Any, **kwargs: Any) -> Any:
        result = original.__func__(cls, *args, **kwargs)
        model = result[0] if isinstance(result, tuple) else result
        if isinstance(model, wrapped):
            _after_construction(model)
        return result

    PreTrainedModel.from_pretrained = classmethod(from_pretrained)  # type: ignore[assignment]
    _originals.append((PreTrainedModel, original))


def install() -> list[type]:
    """Wrap the ``__init__`` of the families' model classes and ``PreTrainedModel.from_pretrained``;
    returns the wrapped classes."""
    wrapped = []
    for family in families():
        for cls in model_classes(family):
            if "__init__" in cls.__dict__:
                _wrap(cls)
                wrapped.append(cls)
    _wrap_from_pretrained(tuple(wrapped))
    return wrapped


def uninstall() -> None:
    """Undo [`install`][gswa_plugin.testing.hf_suite.install]."""
    while _originals:
        cls, original = _originals.pop()
        if isinstance(original, classmethod):
            cls.from_pretrained = original  # type: ignore[attr-defined]
        else:
            cls.__init__ = original  # type: ignore[misc]


def pytest_configure(config: Any) -> None:
    if os.environ.get(DISABLE_ENV) == "1":
        config._gswa_hf_suite = "disabled (GSWA_HF_SUITE_DISABLE=1): models are left plain"
        return
    cfg = gswa_config()
    wrapped = install()
    config._gswa_hf_suite = f"GSWA config {cfg}; wrapping {len(wrapped)} model classes of {', '.join(families())}"


def pytest_unconfigure(config: Any) -> None:
    uninstall()


def pytest_report_header(config: Any) -> str:
    return f"gswa hf-suite: {getattr(config, '_gswa_hf_suite', 'not configured')}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    tr = terminalreporter
    tr.section("gswa hf-suite")
    tr.write_line(getattr(tr.config, "_gswa_hf_suite", "not configured"))
    enabled = ", ".join(f"{k}: {v}" for k, v in sorted(enabled_counts.items())) or "none"
    tr.write_line(f"GSWA enabled on {sum(enabled_counts.values())} models ({enabled})")
    if skipped_counts:
        left = ", ".join(f"{k}: {v}" for k, v in sorted(skipped_counts.items()))
        tr.write_line(f"left alone (no adapter matches): {sum(skipped_counts.values())} models ({left})")
