"""The question-aware variant in the lmms-eval models (``.venv-lmms-eval`` only, marker
``lmms_eval``): a saved ``text_guided`` GSWA evaluates MME offline through lmms-eval; at
identity it answers exactly as the host without GSWA, and a non-identity one runs too."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.lmms_eval
pytest.importorskip("lmms_eval", reason="lmms-eval is installed only in .venv-lmms-eval (.ci/steps/50-lmms-eval.sh)")

import gswa_plugin  # noqa: E402
from gswa_plugin.tools import inspect as it  # noqa: E402
from tests.lmms_eval_data import write_task_data  # noqa: E402
from tests.test_lmms_eval import OFFLINE, _answers_in_words, _tiny  # noqa: E402


def test_text_guided_runs_in_lmms_eval_and_is_the_identity_at_init(tmp_path, monkeypatch):
    write_task_data(tmp_path)
    model, proc = _tiny("internvl")
    _answers_in_words(model)
    model.save_pretrained(tmp_path / "host")
    proc.save_pretrained(tmp_path / "host")
    small = {"variant": "text_guided", "hidden_size": 32, "num_heads": 4}
    gswa_plugin.enable(model, small)
    gswa_plugin.save(model, tmp_path / "identity")
    gswa_plugin.disable(model)
    gswa_plugin.enable(model, {**small, "identity_init": False, "temperature": 0.1})
    gswa_plugin.save(model, tmp_path / "peaked")
    gswa_plugin.disable(model)
    monkeypatch.chdir(tmp_path)
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)

    def answers(gswa):
        args = {"pretrained": str(tmp_path / "host"), "gswa": str(gswa), "max_tiles": 4, "max_new_tokens": 4}
        return it.task_answers(it.run_lmms_eval(args, ["mme"], "gswa_internvl"))["mme"]

    base = answers("none")
    assert len(base) == 6
    assert answers(tmp_path / "identity") == base
    peaked = answers(tmp_path / "peaked")
    assert len(peaked) == 6 and all(a.strip() for a in peaked)
