"""The adapter contract as a function: run every check on your own adapter and host.

Every adapter, built-in or from a third-party plugin, must meet the same contract. Each check
looks at what the language model actually receives (a forward pre-hook on the module that gets
``inputs_embeds``) or at the logits, so it holds whatever the adapter does inside:

- ``identity``: at initialisation GSWA changes nothing. The logits, the language model's inputs
  and (where the host supports it) every ``generate()`` step are bit-identical to the host's
  own, and every tile weight is exactly 1.
- ``exact_weighting``: with clearly non-uniform weights, every position that holds a view's
  features is exactly ``w_view`` times what it was, and every other position (text, tokens the
  host adds such as newlines) is untouched; each thumbnail has weight 1 and its tokens are
  unchanged; each image's tile weights have mean 1.
- ``gradients``: a training step gives every GSWA parameter a finite, non-zero gradient.
- ``layout``: the views per image the adapter reads are the ones the processor produced (the
  case needs two images with different tile counts), the thumbnail sits where the adapter
  says (and where the case says, when it says), and ``last_weights`` has one weight per tile.
- ``disable``: ``enable()`` patches the model, and ``disable()`` removes ``model.gswa``, every
  instance attribute and hook it added, and restores bit-identical logits.
- ``save_load``: ``save()`` then ``load()`` on a freshly built model reproduces the logits.

Which language-model positions hold which view is found without host knowledge: a temporary
plugin answers ``gswa_process_tiles`` first and replaces each view's features by its own marker
value; the positions where a marker lands belong to that view (tokens the host drops, such as
LLaVA-NeXT's unpadding, never land; tokens the host adds carry no marker).

Example::

    from gswa_plugin.testing import check_adapter

    report = check_adapter(
        make_model,                      # builds a fresh tiny model, deterministically
        make_inputs,                     # two images with different tile counts, real processor
        views_per_image=[5, 4],          # what the processor produced (tiles + thumbnail)
        language_model=lambda m: m.model.language_model,
        adapter="my_adapter",
    )
    print(report)
    report.assert_passed()
"""

from __future__ import annotations

import copy
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from gswa_plugin import plugins
from gswa_plugin.api import disable, enable, last_weights
from gswa_plugin.checkpoint import load, save
from gswa_plugin.handle import MODULE_ATTR, GSWAHandle, get_handle, is_enabled
from gswa_plugin.hookspecs import hookimpl
from gswa_plugin.layout import TileBatch

__all__ = [
    "CHECKS",
    "AdapterCase",
    "CheckResult",
    "ContractReport",
    "check_adapter",
    "check_model",
    "view_of_position",
]

#: A small GSWA so that every check stays fast (GSWA's own width, not the host's).
SMALL: dict[str, Any] = {"hidden_size": 32, "num_heads": 4}
#: Non-identity initial parameters and a sharp temperature: clearly non-uniform weights.
PEAKED: dict[str, Any] = {**SMALL, "identity_init": False, "temperature": 0.1}
#: Name under which the temporary marker plugin is registered during a check.
MARKER_PLUGIN_NAME = "gswa-contract-markers"


# --- the case ---------------------------------------------------------------------------------
@dataclass
class AdapterCase:
    """One host to run the adapter contract on.

    Attributes:
        make_model: builds a NEW model on every call (eval mode), deterministically: two calls
            give the same weights. Use a tiny model (fp32) so that the checks take seconds.
        make_inputs: the model's inputs (keyword arguments of ``model(...)``, with ``input_ids``)
            for a batch of TWO images with DIFFERENT tile counts, made by the host's real
            processor. Called once per run; every check gets its own deep copy.
        views_per_image: what the processor produced: views (tiles plus thumbnail) per image.
        language_model: the module whose ``forward`` receives ``inputs_embeds`` (what the
            language model sees), as a function of the model or a dotted path from it
            (``"model.language_model"``).
        config: extra GSWA settings for this host (e.g. a declarative adapter's ``declare``),
            as the content of a ``gswa:`` block. The checks choose the variant, size and
            initialisation themselves; they check the default ``mode: embed``.
        supports_generate: whether ``generate()`` works on this host (checked for identity).
        adapter: the registered adapter to check; ``None`` lets ``enable()`` pick the first
            adapter that matches the model (the report says which one ran).
        global_position: where the host's processor puts each image's thumbnail (``"first"``,
            ``"last"`` or ``"none"``); when given, the ``layout`` check compares the adapter's
            layout with it. Leave ``None`` to skip that comparison.
        id: a name for the case in reports (default: the adapter's name, if given).
    """

    make_model: Callable[[], nn.Module]
    make_inputs: Callable[[], Mapping[str, Any]]
    views_per_image: Sequence[int]
    language_model: Callable[[nn.Module], nn.Module] | str
    config: Mapping[str, Any] | None = field(default_factory=dict)
    supports_generate: bool = True
    adapter: str | None = None
    global_position: str | None = None
    id: str = ""

    def __post_init__(self) -> None:
        self.views_per_image = [int(v) for v in self.views_per_image]
        self.config = dict(self.config or {})
        self.id = self.id or self.adapter or ""

    def check(self, checks: Sequence[str] | None = None, *, raise_on_failure: bool = False) -> ContractReport:
        """Run the contract on this case; see [`check_adapter`][gswa_plugin.testing.contract.check_adapter]."""
        return _run_case(self, checks, raise_on_failure)


# --- the report -------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The outcome of one contract check.

    Attributes:
        name: the check's name (one of [`CHECKS`][gswa_plugin.testing.contract.CHECKS]).
        title: what the check verifies, in one line.
        passed: whether it passed.
        reason: one line: what was verified, or why it failed.
        seconds: how long it took.
        details: for a failure, the full message (and the traceback of an unexpected
            exception); empty for a pass.
    """

    name: str
    title: str
    passed: bool
    reason: str
    seconds: float = 0.0
    details: str = ""

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<16} {self.reason}"


@dataclass
class ContractReport:
    """Every check of one [`check_adapter`][gswa_plugin.testing.contract.check_adapter] run.

    Attributes:
        case: the case's id (empty when it has none).
        adapter: the name of the adapter that ``enable()`` used (``None`` if it never ran).
        results: one [`CheckResult`][gswa_plugin.testing.contract.CheckResult] per check, in the order they ran.
    """

    case: str
    adapter: str | None
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        """The checks that failed."""
        return [r for r in self.results if not r.passed]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r} in this report; it has {[r.name for r in self.results]}")

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def __str__(self) -> str:
        ok = sum(r.passed for r in self.results)
        head = f"GSWA adapter contract{self._which()}: {ok} of {len(self.results)} checks passed"
        return "\n".join([head, *(f"  {r}" for r in self.results)])

    def _which(self) -> str:
        case = f"case {self.case!r}, " if self.case and self.case != self.adapter else ""
        return f", {case}adapter {self.adapter!r}"

    def assert_passed(self) -> None:
        """Raise an ``AssertionError`` listing every failed check at once.

        Raises:
            AssertionError: one or more checks failed; the message names each with its reason,
                then the full details (and tracebacks of unexpected exceptions).
        """
        failed = self.failures
        if not failed:
            return
        lines = [f"{len(failed)} of {len(self.results)} adapter contract checks failed{self._which()}:"]
        lines += [f"  - {r.name}: {r.reason}" for r in failed]
        for r in failed:
            if r.details and r.details.strip() != r.reason:
                lines += ["", f"[{r.name}]", r.details.rstrip()]
        raise AssertionError("\n".join(lines))


# --- the entry point --------------------------------------------------------------------------
def check_adapter(
    make_model: Callable[[], nn.Module],
    make_inputs: Callable[[], Mapping[str, Any]],
    *,
    views_per_image: Sequence[int],
    language_model: Callable[[nn.Module], nn.Module] | str,
    config: Mapping[str, Any] | None = None,
    supports_generate: bool = True,
    adapter: str | None = None,
    global_position: str | None = None,
    checks: Sequence[str] | None = None,
    raise_on_failure: bool = False,
) -> ContractReport:
    """Run the adapter contract on a host and report every check.

    Each check builds its own model with ``make_model``, so the checks are independent; a check
    that fails (an assertion or any exception) is reported and the next one runs. Whatever
    happens, no check leaves its temporary plugin registered, and every model it built has GSWA
    disabled again and its train/eval mode restored.

    Args:
        make_model: builds a NEW model on every call (eval mode), deterministically.
        make_inputs: the inputs of ``model(**inputs)`` (with ``input_ids``) for a batch of two
            images with different tile counts, made by the host's real processor.
        views_per_image: views (tiles plus thumbnail) per image that the processor produced.
        language_model: the module whose forward receives ``inputs_embeds``: a function of the
            model, or a dotted path from it such as ``"model.language_model"``.
        config: extra GSWA settings for this host (the content of a ``gswa:`` block).
        supports_generate: whether ``generate()`` works on this host (identity is then checked
            at every generation step too).
        adapter: the registered adapter to check (put in the config as ``adapter:``); ``None``
            lets ``enable()`` pick one by matching the model.
        global_position: where the processor puts the thumbnail (``"first"``, ``"last"``,
            ``"none"``), compared with the adapter's layout when given.
        checks: names of the checks to run (see [`CHECKS`][gswa_plugin.testing.contract.CHECKS]); all of them by
            default.
        raise_on_failure: raise an ``AssertionError`` listing every failure instead of
            returning a report with failures.

    Returns:
        A [`ContractReport`][gswa_plugin.testing.contract.ContractReport] with one
        [`CheckResult`][gswa_plugin.testing.contract.CheckResult] per check.

    Raises:
        ValueError: an unknown check name, an invalid ``global_position`` or
            ``views_per_image``, or ``adapter`` contradicting ``config['adapter']``.
        AssertionError: with ``raise_on_failure``, when a check failed.
    """
    case = AdapterCase(
        make_model=make_model,
        make_inputs=make_inputs,
        views_per_image=views_per_image,
        language_model=language_model,
        config=config,
        supports_generate=supports_generate,
        adapter=adapter,
        global_position=global_position,
    )
    return _run_case(case, checks, raise_on_failure)


def _views_of(processor: Any, image: Any, kwargs: Mapping[str, Any]) -> int:
    """Views the processor's image processor makes of one image on its own (independent of any
    adapter): the rows of ``pixel_values`` (``[views, C, H, W]``, or ``[1, views, C, H, W]``)."""
    ip = getattr(processor, "image_processor", processor)
    pixels = ip(images=[image], return_tensors="pt", **kwargs)["pixel_values"]
    if pixels.dim() == 4:
        return int(pixels.shape[0])
    if pixels.dim() == 5 and pixels.shape[0] == 1:
        return int(pixels.shape[1])
    raise ValueError(
        f"cannot count the views of an image from pixel_values of shape {tuple(pixels.shape)}; pass views_per_image="
    )


def _default_language_model(model: nn.Module) -> nn.Module:
    for path in ("model.language_model", "language_model"):
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(
        f"{type(model).__name__} has no `model.language_model` or `language_model`; pass language_model= (the module "
        "whose forward receives inputs_embeds)"
    )


def check_model(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any],
    *,
    config: Mapping[str, Any] | None = None,
    prompt: str = "describe the image",
    processor_kwargs: Mapping[str, Any] | None = None,
    views_per_image: Sequence[int] | None = None,
    language_model: Callable[[nn.Module], nn.Module] | str | None = None,
    supports_generate: bool = True,
    global_position: str | None = None,
    checks: Sequence[str] | None = None,
) -> ContractReport:
    """A dry run of the adapter contract on your own model, processor and two images, before
    training: what holds and what does not (``print(report)``).

    Every check runs on its own deep copy of ``model`` (GSWA must not be enabled on it), so the
    model is left as it was; the copies cost the model's memory once per check, so use a small
    checkpoint or [`check_adapter`][gswa_plugin.testing.contract.check_adapter] with a factory
    for large ones.

    Args:
        model: the host model, GSWA not enabled.
        processor: its processor; it is called with one prompt per image (``image_token``
            before ``prompt``).
        images: two images the processor cuts into different numbers of views.
        config: the ``gswa:`` block to check (e.g. a declarative adapter's ``adapter`` and
            ``declare``); empty: the adapter ``enable()`` picks.
        prompt: the text after each image placeholder.
        processor_kwargs: extra arguments of the processor call (e.g. ``do_pan_and_scan=True``).
        views_per_image: views the processor makes of each image; by default counted by running
            the image processor on each image alone (independent of the adapter).
        language_model: the module whose forward receives ``inputs_embeds`` (default
            ``model.language_model`` or ``language_model``).
        supports_generate: whether to check ``generate()`` too.
        global_position: where the processor puts the thumbnail, compared when given.
        checks: a subset of [`CHECKS`][gswa_plugin.testing.contract.CHECKS].

    Raises:
        ValueError: GSWA is already enabled on ``model``, or not two images.
    """
    if is_enabled(model):
        raise ValueError("check_model needs the model without GSWA: call gswa_plugin.disable(model) first")
    if len(images) != 2:
        raise ValueError(f"check_model needs two images with different view counts, got {len(images)}")
    extra = dict(processor_kwargs or {})
    token = getattr(processor, "image_token", None) or "<image>"
    pristine = copy.deepcopy(model).eval()

    def make_inputs() -> dict[str, Any]:
        texts = [f"{token} {prompt}", f"{prompt} {token}"]
        return dict(processor(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True, **extra))

    if views_per_image is None:
        ip_kwargs = {k: v for k, v in extra.items() if k not in ("padding", "padding_side", "truncation")}
        views_per_image = [_views_of(processor, im, ip_kwargs) for im in images]
    cfg = dict(config or {})
    case = AdapterCase(
        make_model=lambda: copy.deepcopy(pristine),
        make_inputs=make_inputs,
        views_per_image=views_per_image,
        language_model=language_model or _default_language_model,
        config={k: v for k, v in cfg.items() if k != "adapter"},
        supports_generate=supports_generate,
        adapter=cfg.get("adapter"),
        global_position=global_position,
        id=f"{type(model).__name__}",
    )
    return _run_case(case, checks, False)


# --- running ----------------------------------------------------------------------------------
class _Inputs:
    """``make_inputs()`` called once per run; each check gets its own deep copy."""

    def __init__(self, make_inputs: Callable[[], Mapping[str, Any]]):
        self._make = make_inputs
        self._value: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        if self._value is None:
            made = self._make()
            if not isinstance(made, Mapping):
                raise TypeError(f"make_inputs() must return a mapping of model inputs, got {type(made).__name__}")
            self._value = dict(made)
        try:
            return copy.deepcopy(self._value)
        except Exception:  # noqa: BLE001 - something that cannot be copied: build the inputs again
            return dict(self._make())


class _Run:
    """What one check needs: the case, fresh models and inputs, and the clean-up of both."""

    def __init__(self, case: AdapterCase, inputs: _Inputs):
        self.case = case
        self._inputs = inputs
        self.models: list[tuple[nn.Module, bool]] = []
        self.adapter_name: str | None = None

    def model(self) -> nn.Module:
        model = self.case.make_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"make_model() must return a torch.nn.Module, got {type(model).__name__}")
        self.models.append((model, model.training))
        return model

    def inputs(self) -> dict[str, Any]:
        return self._inputs.get()

    def config(self, **extra: Any) -> dict[str, Any]:
        cfg = {**SMALL, **self.case.config, **extra}
        if self.case.adapter is not None:
            cfg["adapter"] = self.case.adapter
        return cfg

    def enable(self, model: nn.Module, **extra: Any) -> GSWAHandle:
        handle = enable(model, self.config(**extra))
        self.adapter_name = handle.adapter.name
        return handle

    def language_model(self, model: nn.Module) -> nn.Module:
        where = self.case.language_model
        if isinstance(where, str):
            module: Any = model
            for part in where.split(".") if where else []:
                module = getattr(module, part, None)
                if module is None:
                    raise AssertionError(f"language_model: {type(model).__name__} has no module {where!r}")
        else:
            module = where(model)
        if not isinstance(module, nn.Module):
            raise TypeError(f"language_model must give an nn.Module, got {type(module).__name__}")
        return module

    def cleanup(self) -> list[str]:
        """Disable GSWA on every model this check built and restore its train/eval mode; the
        problems met on the way, one line each."""
        problems: list[str] = []
        for model, training in self.models:
            for _ in range(10_000):  # every failed undo step is dropped: this ends
                if not is_enabled(model):
                    break
                try:
                    disable(model)
                except Exception as exc:  # noqa: BLE001 - reported, and the next undo step runs
                    problems.append(f"disable() raised {_one_line(exc)}")
            try:
                model.train(training)
            except Exception as exc:  # noqa: BLE001  # pragma: no cover - a host that cannot switch modes
                problems.append(f"restoring train/eval mode raised {_one_line(exc)}")
        self.models.clear()
        return problems


def _run_case(case: AdapterCase, checks: Sequence[str] | None, raise_on_failure: bool) -> ContractReport:
    selected = _select(case, checks)
    inputs = _Inputs(case.make_inputs)
    results: list[CheckResult] = []
    adapter_name: str | None = None
    for name in selected:
        title, fn = _CHECKS[name]
        run = _Run(case, inputs)
        start = time.perf_counter()
        passed, reason, details = True, "", ""
        try:
            reason = fn(run)
        except Exception as exc:  # noqa: BLE001 - any failure of a check is a failed check
            passed, reason = False, _one_line(exc)
            details = str(exc) if isinstance(exc, AssertionError) else traceback.format_exc()
        finally:
            problems = run.cleanup()
        if problems and passed:
            passed, reason = False, "clean-up after the check: " + "; ".join(problems)
            details = reason
        elif problems:
            details = f"{details.rstrip()}\nclean-up after the check: {'; '.join(problems)}"
        adapter_name = adapter_name or run.adapter_name
        results.append(CheckResult(name, title, passed, _clip(reason), round(time.perf_counter() - start, 3), details))
    report = ContractReport(case.id, adapter_name, results)
    if raise_on_failure:
        report.assert_passed()
    return report


def _select(case: AdapterCase, checks: Sequence[str] | None) -> list[str]:
    if isinstance(checks, str):
        checks = [checks]
    selected = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in selected if c not in _CHECKS]
    if unknown:
        raise ValueError(f"unknown contract check(s) {unknown}; the checks are {list(CHECKS)}")
    if not case.views_per_image or any(v < 1 for v in case.views_per_image):
        raise ValueError(f"views_per_image needs one count >= 1 per image, got {case.views_per_image}")
    if case.global_position not in (None, "first", "last", "none"):
        raise ValueError(f"global_position must be 'first', 'last', 'none' or None, got {case.global_position!r}")
    named = case.config.get("adapter")
    if case.adapter is not None and named is not None and named != case.adapter:
        raise ValueError(f"adapter={case.adapter!r} but the config names adapter {named!r}")
    return selected


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, AssertionError):
        return first or "assertion failed"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require(condition: Any, message: str) -> None:
    """``assert`` that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


def _difference(got: torch.Tensor, want: torch.Tensor) -> str:
    """How two tensors differ, in a few words."""
    if got.shape != want.shape:
        return f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"
    diff = got != want
    n = int(diff.sum())
    if not n:
        return "no element differs"
    delta = (got.double() - want.double()).abs()
    return f"{n} of {diff.numel()} values differ (max |difference| {float(delta[diff].max()):.3g})"


# --- what the model produces and what the language model receives ------------------------------
def _logits(model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _generate(model: nn.Module, inputs: Mapping[str, Any]) -> Any:
    with torch.no_grad():
        return model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )


def _forward(run: _Run, model: nn.Module, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of one forward and the ``inputs_embeds`` the language model received in it."""
    seen: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise AssertionError(
                f"the language model ({type(module).__name__}) was called without the keyword `inputs_embeds`: "
                "pass as language_model the module whose forward receives the merged text and image embeddings"
            )
        seen["embeds"] = embeds.detach().clone()

    h = run.language_model(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        logits = _logits(model, inputs)
    finally:
        h.remove()
    _require("embeds" in seen, "the language model was never called in a forward of the model")
    return logits, seen["embeds"]


def _lm_embeds(run: _Run, model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    """The ``inputs_embeds`` the language model receives in one forward."""
    return _forward(run, model, inputs)[1]


def _last_batch(handle: GSWAHandle) -> TileBatch:
    batch = handle.last_batch
    _require(
        batch is not None and batch.weights is not None,
        f"GSWA saw no tiles in the forward: the '{handle.adapter.name}' adapter never called handle.process()",
    )
    return batch


class _Markers:
    """Answers ``gswa_process_tiles`` first: view ``v``'s features become the constant ``-1000 - v``."""

    @hookimpl(tryfirst=True)
    def gswa_process_tiles(self, batch: TileBatch, handle: Any) -> TileBatch:
        f = batch.features
        marks = -1000.0 - torch.arange(f.shape[0], dtype=f.dtype, device=f.device)
        batch.features = marks.view(-1, *([1] * (f.dim() - 1))).expand_as(f).clone()
        batch.weights = torch.ones(f.shape[0], device=f.device)
        return batch


def _view_of_position(run: _Run, model: nn.Module, inputs: Mapping[str, Any], n_views: int) -> torch.Tensor:
    """``[batch, seq]``: the view whose features sit at each language-model position, ``-1``
    elsewhere. GSWA must be enabled on ``model``."""
    marker = _Markers()
    plugins.register_plugin(marker, name=MARKER_PLUGIN_NAME)
    try:
        embeds = _lm_embeds(run, model, inputs)
    finally:
        plugins.unregister_plugin(marker)
    where = torch.full(embeds.shape[:2], -1, dtype=torch.long, device=embeds.device)
    for v in range(n_views):
        hit = (embeds == -1000.0 - v).all(dim=-1)
        _require(
            hit.any(),
            f"view {v}'s features reach no language-model position (does the adapter hand the features "
            "handle.process() returns back to the host?)",
        )
        _require(not (where[hit] >= 0).any(), "two views claim the same position")
        where[hit] = v
    return where


def view_of_position(case: AdapterCase, model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    """Which view's features sit at each language-model position: ``[batch, seq]``, ``-1`` at
    text and at tokens the host adds (the contract's marker method, for tests of your own).

    Args:
        case: the host case (its ``language_model`` and ``views_per_image`` are used).
        model: a model of the case with GSWA enabled.
        inputs: the model inputs of one forward.
    """
    run = _Run(case, _Inputs(lambda: inputs))
    return _view_of_position(run, model, inputs, sum(case.views_per_image))


def _state(model: nn.Module) -> dict[str, Any]:
    """Instance attributes and hooks of every submodule (what enable() may patch)."""
    return {
        name: (sorted(vars(m)), len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    }


def _state_difference(before: dict[str, Any], after: dict[str, Any]) -> str:
    names = sorted(set(before) | set(after))
    changed = [n or "<model>" for n in names if before.get(n) != after.get(n)]
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return f"{len(changed)} module(s) differ in instance attributes or hooks: {shown}"


# --- the checks -------------------------------------------------------------------------------
def _check_identity(run: _Run) -> str:
    case = run.case
    model, inputs = run.model(), run.inputs()
    base, base_embeds = _forward(run, model, inputs)
    gen0 = _generate(model, inputs) if case.supports_generate else None
    run.enable(model)
    logits, embeds = _forward(run, model, inputs)
    _require(
        torch.equal(embeds, base_embeds),
        f"at initialisation the language model's inputs change: {_difference(embeds, base_embeds)}",
    )
    _require(torch.equal(logits, base), f"at initialisation the logits change: {_difference(logits, base)}")
    weights = last_weights(model)
    _require(
        all(torch.equal(w, torch.ones_like(w)) for w in weights),
        f"at initialisation every tile weight must be exactly 1, got {[w.tolist() for w in weights]}",
    )
    if gen0 is None:
        return "logits and language-model inputs bit-identical at initialisation, weights 1 (generate() not checked)"
    gen1 = _generate(model, inputs)
    _require(
        torch.equal(gen0.sequences, gen1.sequences),
        f"generate() gives other tokens at initialisation: {_difference(gen1.sequences, gen0.sequences)}",
    )
    _require(
        len(gen0.logits) == len(gen1.logits),
        f"generate() runs {len(gen1.logits)} steps with GSWA, {len(gen0.logits)} without",
    )
    for step, (a, b) in enumerate(zip(gen0.logits, gen1.logits)):
        _require(torch.equal(a, b), f"generate() step {step} differs at initialisation: {_difference(b, a)}")
    return "logits, language-model inputs and every generate() step bit-identical at initialisation, weights 1"


def _check_exact_weighting(run: _Run) -> str:
    case = run.case
    model, inputs = run.model(), run.inputs()
    base = _lm_embeds(run, model, inputs)
    handle = run.enable(model, **PEAKED)
    where = _view_of_position(run, model, inputs, sum(case.views_per_image))
    got = _lm_embeds(run, model, inputs)
    batch = _last_batch(handle)
    w = batch.weights
    _require(not torch.allclose(w, torch.ones_like(w)), "weights should be non-uniform here but are all close to 1")
    image_pos = where >= 0
    expected = base.clone()
    expected[image_pos] = base[image_pos] * w[where[image_pos]].to(base.dtype)[:, None]
    if not torch.equal(got, expected):  # tiles scaled exactly; text and host-added tokens untouched
        if got.shape != expected.shape:
            raise AssertionError(f"the language model's inputs change shape: {_difference(got, expected)}")
        wrong = (got != expected).any(dim=-1)
        wrong_image, wrong_other = wrong & image_pos, wrong & ~image_pos
        parts = []
        if wrong_image.any():
            views = sorted({int(v) for v in where[wrong_image].tolist()})
            unweighted = bool(torch.equal(got[wrong_image], base[wrong_image]))
            parts.append(
                f"{int(wrong_image.sum())} image position(s) of view(s) {views} are not exactly w_view x their "
                f"features{' (they reach the language model unweighted)' if unweighted else ''}"
            )
        if wrong_other.any():
            parts.append(f"{int(wrong_other.sum())} text or host-added position(s) changed")
        raise AssertionError("; ".join(parts) + f" ({_difference(got, expected)})")
    for g in batch.layout.global_indices():
        if g is not None:
            _require(w[g] == 1.0, f"thumbnail (view {g}) has weight {float(w[g])}, not 1")
            _require(
                torch.equal(got[where == g], base[where == g]),
                f"thumbnail (view {g}) tokens changed: {_difference(got[where == g], base[where == g])}",
            )
    for i, ws in enumerate(batch.tile_weights()):
        tol = max(1e-5, 8 * torch.finfo(ws.dtype).eps)
        mean = float(ws.double().mean())
        _require(abs(mean - 1.0) <= tol, f"image {i}'s tile weights have mean {mean:.6g}, not 1")
    return (
        f"{int(image_pos.sum())} image positions are exactly w_view x their features, "
        f"{int((~image_pos).sum())} other positions and the thumbnails untouched, tile weights mean 1"
    )


def _check_gradients(run: _Run) -> str:
    model, inputs = run.model(), run.inputs()
    _require("input_ids" in inputs, "make_inputs() gives no `input_ids` (the gradient check uses them as labels)")
    run.enable(model, variant="self_attn", identity_init=False, num_layers=1)
    model.train()
    out = model(**inputs, labels=inputs["input_ids"].clone())
    out.loss.backward()
    w = _last_batch(get_handle(model)).weights
    _require(not torch.allclose(w, torch.ones_like(w)), "weights should be non-uniform here but are all close to 1")
    params = list(getattr(model, MODULE_ATTR).named_parameters())
    for name, p in params:
        _require(p.grad is not None, f"{name} gets no gradient")
        _require(torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient")
        _require(p.grad.abs().sum() > 0, f"{name} has an all-zero gradient")
    return f"all {len(params)} GSWA parameters get finite, non-zero gradients from the loss"


def _check_layout(run: _Run) -> str:
    case = run.case
    vpi = case.views_per_image
    _require(len(vpi) == 2 and vpi[0] != vpi[1], "a contract case needs two images with different tile counts")
    model, inputs = run.model(), run.inputs()
    handle = run.enable(model)
    _logits(model, inputs)
    layout = _last_batch(handle).layout
    _require(
        list(layout.views_per_image) == vpi,
        f"the adapter reads views per image {list(layout.views_per_image)}, the processor produced {vpi}",
    )
    _require(
        layout.global_position == handle.adapter.global_position,
        f"the layout puts the thumbnail {layout.global_position!r}, the adapter declares "
        f"{handle.adapter.global_position!r}",
    )
    if case.global_position is not None:
        _require(
            layout.global_position == case.global_position,
            f"the adapter puts the thumbnail {layout.global_position!r}, the processor puts it {case.global_position!r}",
        )
    tiles = [w.shape[0] for w in last_weights(model)]
    _require(
        tiles == layout.tiles_per_image(),
        f"last_weights() has {tiles} weights per image, the layout {layout.tiles_per_image()} tiles",
    )
    return f"views per image {vpi}, thumbnail {layout.global_position!r}, tiles per image {tiles}"


def _check_disable(run: _Run) -> str:
    model, inputs = run.model(), run.inputs()
    base = _logits(model, inputs)  # first call: the host's own lazy set-up happens here
    before = _state(model)
    run.enable(model, variant="cosine")
    _require(_state(model) != before, "enable() patched nothing")
    changed = _logits(model, inputs)
    _require(not torch.equal(changed, base), "with (cosine) GSWA enabled the logits are the host's own")
    disable(model)
    _require(not hasattr(model, MODULE_ATTR), f"model.{MODULE_ATTR} is still there after disable()")
    after = _state(model)
    _require(after == before, f"disable() leaves patches behind: {_state_difference(before, after)}")
    logits = _logits(model, inputs)
    _require(torch.equal(logits, base), f"after disable() the logits differ: {_difference(logits, base)}")
    return "enable() patches the model; disable() removes every patch and restores bit-identical logits"


def _check_save_load(run: _Run) -> str:
    model, inputs = run.model(), run.inputs()
    base = _logits(model, inputs)
    run.enable(model, **PEAKED)
    trained = _logits(model, inputs)
    _require(not torch.equal(trained, base), "with (peaked) GSWA enabled the logits are the host's own")
    with tempfile.TemporaryDirectory(prefix="gswa-contract-") as tmp:
        save(model, Path(tmp) / "gswa")
        fresh = run.model()
        _require(fresh is not model, "make_model() returned the same model twice; it must build a new one")
        load(fresh, Path(tmp) / "gswa")
    logits = _logits(fresh, inputs)
    _require(
        torch.equal(logits, trained),
        f"a fresh model with the saved GSWA loaded gives other logits: {_difference(logits, trained)}",
    )
    return "save() then load() on a fresh model gives bit-identical logits"


#: The checks, by name, in the order they run: (one-line title, function).
_CHECKS: dict[str, tuple[str, Callable[[_Run], str]]] = {
    "identity": (
        "identity at initialisation: logits, language-model inputs and generate() unchanged",
        _check_identity,
    ),
    "exact_weighting": (
        "the language model receives exactly w x each tile's tokens; thumbnail and text untouched; mean 1",
        _check_exact_weighting,
    ),
    "gradients": ("gradients reach every GSWA parameter", _check_gradients),
    "layout": ("the layout matches what the processor produced", _check_layout),
    "disable": ("disable() removes every patch and restores the logits bit-exactly", _check_disable),
    "save_load": ("save() then load() on a fresh model reproduces the logits", _check_save_load),
}
#: Names of the contract checks, in the order [`check_adapter`][gswa_plugin.testing.contract.check_adapter] runs them.
CHECKS: tuple[str, ...] = tuple(_CHECKS)
