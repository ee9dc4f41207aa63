"""The adapter contract, checked on every registered adapter with its tiny real host.

The checks themselves live in :mod:`gswa_plugin.testing.contract` (public:
``gswa_plugin.testing.check_adapter``, which third-party adapter authors run on their own
adapter); here they run on every built-in adapter, and the function is shown able to fail.

Parametrised at collection time over ``gswa_plugin.plugins.adapter_names()``: an adapter without
a case in ``tests/host_cases/`` fails here (it is not skipped), so registering an adapter obliges
its author to add a case.
"""

from __future__ import annotations

import contextlib
import runpy
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

import gswa_plugin
from gswa_plugin import plugins
from gswa_plugin.adapters.internvl import InternVLAdapter
from gswa_plugin.hookspecs import hookimpl
from gswa_plugin.testing import CHECKS, AdapterCase, ContractReport, check_adapter
from gswa_plugin.testing.contract import MARKER_PLUGIN_NAME

from .host_cases import HostCase, all_cases
from .host_cases.internvl import CASE as INTERNVL

ROOT = Path(__file__).resolve().parents[1]


#: Adapters of hosts the contract's ``inputs_embeds`` probe cannot see (cross-attention hosts),
#: with the test that checks the same properties on what their language model receives.
CHECKED_ELSEWHERE = {"mllama": "tests/test_mllama.py"}


def _params() -> list[Any]:
    by_adapter: dict[str, list[HostCase]] = defaultdict(list)
    for case in all_cases():
        by_adapter[case.adapter].append(case)
    params = []
    for name in plugins.adapter_names():
        if name in CHECKED_ELSEWHERE:
            assert (ROOT / CHECKED_ELSEWHERE[name]).is_file(), CHECKED_ELSEWHERE[name]
            continue
        if not by_adapter.get(name):
            params.append(pytest.param((name, None), id=f"{name}-has-no-case"))
        for case in by_adapter.get(name, []):
            params.append(pytest.param((name, case), id=case.id))
    return params


PARAMS = _params()


@pytest.fixture(params=PARAMS)
def case(request) -> HostCase:
    name, found = request.param
    if found is None:
        pytest.fail(
            f"adapter '{name}' is registered but has no contract case: add a module to tests/host_cases/ "
            "exposing `CASE = HostCase(adapter=..., ...)` (see tests/host_cases/__init__.py)"
        )
    return found


# --- the contract on every registered adapter ---------------------------------------------------
def test_every_case_names_a_registered_adapter():
    names = set(plugins.adapter_names())
    unknown = [c.id for c in all_cases() if c.adapter not in names]
    assert not unknown, f"cases for adapters that are not registered: {unknown}"


def test_every_adapter_has_a_section_in_the_docs():
    page = ROOT / "docs" / "adapters.md"
    headings = [line for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("### ")]
    missing = [n for n in plugins.adapter_names() if not any(f"`{n}`" in h for h in headings)]
    assert not missing, f"docs/adapters.md 'Built-in adapters' has no `### ` section naming: {missing}"


def test_adapter_meets_the_contract(case):
    report = case.check()
    report.assert_passed()  # every failed check at once, each with its reason
    assert [r.name for r in report] == list(CHECKS)
    assert report.adapter == case.adapter  # the case's adapter ran, not another that matches the host


# --- check_adapter can fail: deliberately broken adapters ---------------------------------------
class _AdapterPlugin:
    def __init__(self, adapter: Any):
        self.adapter = adapter

    @hookimpl
    def gswa_register_adapters(self, register: Callable[[Any], None]) -> None:
        register(self.adapter)


@contextlib.contextmanager
def _registered(adapter: Any) -> Iterator[None]:
    plugin = _AdapterPlugin(adapter)
    plugins.register_plugin(plugin, name=f"test-{adapter.name}")
    try:
        yield
    finally:
        plugins.unregister_plugin(plugin)


class _BrokenInternVL(InternVLAdapter):
    """The built-in InternVL adapter with its ``handle.process`` replaced by ``broken``."""

    auto_match = False

    def broken(self, handle: Any, process: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        raise NotImplementedError

    def install(self, model: Any, handle: Any) -> None:
        handle.process = self.broken(handle, handle.process)  # the adapter's closures call handle.process
        super().install(model, handle)


class WrongTile(_BrokenInternVL):
    """Gives each view the weight of the view before it: identity at init, wrong tile scaled after."""

    name = "broken_wrong_tile"

    def broken(self, handle, process):
        def wrong(features, summaries, layout, **extra):
            out = process(features, summaries, layout, **extra)
            w = handle.last_batch.weights
            return out * (w.roll(1) / w).to(out.dtype)[:, None, None]

        return wrong


class Unweighted(_BrokenInternVL):
    """Runs GSWA but hands the host back the unweighted features."""

    name = "broken_unweighted"

    def broken(self, handle, process):
        def unweighted(features, summaries, layout, **extra):
            process(features, summaries, layout, **extra)
            return features

        return unweighted


class Crashing(_BrokenInternVL):
    """Raises at the seam (while the contract's temporary plugin is registered)."""

    name = "broken_crashing"

    def broken(self, handle, process):
        def crash(features, summaries, layout, **extra):
            raise RuntimeError("boom at the seam")

        return crash


class ThumbnailFirst(InternVLAdapter):
    """Says the thumbnail comes first; InternVL's processor puts it last."""

    name = "broken_thumbnail_first"
    auto_match = False
    global_position = "first"


def _internvl(adapter: str, make_model: Callable[[], Any] = INTERNVL.make_model, **kwargs: Any) -> ContractReport:
    return check_adapter(
        make_model,
        INTERNVL.make_inputs,
        views_per_image=INTERNVL.views_per_image,
        language_model=INTERNVL.language_model,
        adapter=adapter,
        **kwargs,
    )


def _tracked_models() -> tuple[list[Any], Callable[[], Any]]:
    """InternVL's ``make_model``, keeping every model it builds (to look at them afterwards)."""
    made: list[Any] = []

    def make_model() -> Any:
        made.append(INTERNVL.make_model())
        return made[-1]

    return made, make_model


def _no_gswa_left(models: list[Any]) -> None:
    assert models
    assert not any(gswa_plugin.is_enabled(m) or hasattr(m, "gswa") for m in models)
    assert not any(m.training for m in models)  # the gradient check's train() is undone
    assert plugins.get_plugin_manager().get_plugin(MARKER_PLUGIN_NAME) is None


def test_a_wrong_tile_is_reported_by_exactly_the_weighting_check():
    with _registered(WrongTile()):
        report = _internvl("broken_wrong_tile")
    assert report.adapter == "broken_wrong_tile"
    assert [r.name for r in report.failures] == ["exact_weighting"], str(report)
    assert "not exactly w_view x their features" in report["exact_weighting"].reason
    assert report["identity"].passed  # weights are 1 at initialisation: the bug is invisible there


def test_an_adapter_that_forgets_to_weight_fails_several_checks_reported_at_once():
    made, make_model = _tracked_models()
    with _registered(Unweighted()):
        report = _internvl("broken_unweighted", make_model)
    failed = {r.name for r in report.failures}
    assert failed == {"exact_weighting", "gradients", "disable", "save_load"}, str(report)
    assert report["identity"].passed and report["layout"].passed
    assert "gets no gradient" in report["gradients"].reason
    assert all(r.reason and "\n" not in r.reason for r in report)
    with pytest.raises(AssertionError) as raised:
        report.assert_passed()
    message = str(raised.value)
    assert message.startswith("4 of 6 adapter contract checks failed")
    for name in failed:
        assert f"  - {name}: " in message
    with _registered(Unweighted()), pytest.raises(AssertionError, match="adapter contract checks failed"):
        _internvl("broken_unweighted", checks=["gradients"], raise_on_failure=True)
    _no_gswa_left(made)


def test_a_crash_at_the_seam_is_reported_and_cleaned_up():
    made, make_model = _tracked_models()
    with _registered(Crashing()):
        report = _internvl("broken_crashing", make_model, checks=["exact_weighting", "layout"])
    assert [r.name for r in report.failures] == ["exact_weighting", "layout"]
    assert report["exact_weighting"].reason == "RuntimeError: boom at the seam"
    assert "Traceback" in report["exact_weighting"].details
    _no_gswa_left(made)


class FailingUndo(InternVLAdapter):
    """Registers an undo step that raises: disable() fails, and so does the clean-up after a check."""

    name = "broken_failing_undo"
    auto_match = False

    def install(self, model, handle):
        super().install(model, handle)
        handle.add_undo(lambda: 1 / 0)


def test_a_failing_undo_is_reported_and_gswa_is_still_removed():
    made, make_model = _tracked_models()
    with _registered(FailingUndo()):
        report = _internvl("broken_failing_undo", make_model, checks=["identity", "disable"])
    assert report["identity"].reason == "clean-up after the check: disable() raised ZeroDivisionError: division by zero"
    assert report["disable"].reason == "ZeroDivisionError: division by zero"
    _no_gswa_left(made)  # the clean-up ran the remaining undo steps


def test_a_misplaced_thumbnail_is_reported_when_the_case_says_where_it_is():
    with _registered(ThumbnailFirst()):
        report = _internvl("broken_thumbnail_first", checks=["layout"], global_position="last")
    assert not report.passed
    assert "thumbnail 'first', the processor puts it 'last'" in report["layout"].reason


def test_a_model_factory_that_returns_the_same_model_fails():
    model = INTERNVL.make_model()
    report = _internvl("internvl", lambda: model, checks=["save_load"])
    assert "make_model() returned the same model twice" in report["save_load"].reason
    _no_gswa_left([model])


def test_check_adapter_refuses_a_malformed_call():
    with pytest.raises(ValueError, match="unknown contract check"):
        _internvl("internvl", checks=["identity", "speed"])
    with pytest.raises(ValueError, match="names adapter"):
        _internvl("internvl", config={"adapter": "idefics3"})
    with pytest.raises(TypeError, match="HostCase needs adapter"):
        HostCase(adapter="", make_model=INTERNVL.make_model, make_inputs=dict, views_per_image=[1], language_model="m")


def test_a_case_runs_as_check_adapter_does_and_paths_name_the_language_model():
    case = AdapterCase(
        INTERNVL.make_model,
        INTERNVL.make_inputs,
        INTERNVL.views_per_image,
        "model.language_model",
        adapter="internvl",
    )
    assert case.id == "internvl"
    report = case.check(["layout"])
    assert report.passed and [r.name for r in report] == ["layout"]
    assert "views per image [5, 4], thumbnail 'last'" in str(report)


# --- the docs' example ------------------------------------------------------------------------------
def test_docs_example_checks_the_custom_adapter(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "examples"))
    monkeypatch.delitem(sys.modules, "custom_adapter", raising=False)
    namespace = runpy.run_path(str(ROOT / "docs" / "examples" / "check_adapter.py"))
    report = namespace["report"]
    assert report.passed and report.adapter == "my_llava_next"
    assert "6 of 6 checks passed" in capsys.readouterr().out
    assert "my_llava_next" not in plugins.adapter_names()  # the example unregisters its plugin
