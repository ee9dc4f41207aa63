"""recipes/internvl2-2b/paper_metrics.py: the paper's three metrics from lmms-eval results files
(the layout lmms-eval writes: ``results -> task -> "metric,filter"``), the baseline check, deltas."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "recipes/internvl2-2b/paper_metrics.py"
spec = importlib.util.spec_from_file_location("paper_metrics", SCRIPT)
pm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pm)


def _write(path: Path, results: dict) -> Path:
    path.write_text(json.dumps({"results": results, "config": {"model": "gswa_internvl"}}), encoding="utf-8")
    return path


def _runs(root: Path, mme: tuple[float, float], rwqa: float, ocr: float, name: str) -> list[Path]:
    six = _write(root / f"{name}6_results.json", {
        "mme": {"alias": "mme", "mme_perception_score,none": mme[0], "mme_cognition_score,none": mme[1]},
        "realworldqa": {"exact_match,none": 0.0, "exact_match,flexible-extract": rwqa, "exact_match_stderr,none": "N/A"},
    })
    many = _write(root / f"{name}24_results.json", {"ocrbench": {"ocrbench_accuracy,none": ocr}})
    return [six, many]


def test_scores_baseline_check_and_deltas(tmp_path, capsys):
    base = _runs(tmp_path, (1440.0, 436.8), 0.573, 0.784, "base")
    run = _runs(tmp_path, (1450.0, 460.0), 0.5803921568627451, 0.801, "run")
    assert pm.paper_scores(base) == pytest.approx({"mme": 1876.8, "realworldqa": 57.3, "ocrbench": 784.0})
    assert pm.main(["--baseline", *map(str, base), "--trained", *map(str, run)]) == 0
    out = capsys.readouterr().out
    assert "mme" in out and "+33.2" in out and "+0.7" in out and "+17.0" in out and "+36.2" in out
    assert "within the tolerance" in out


def test_a_baseline_off_the_published_numbers_fails_naming_the_metric(tmp_path, capsys):
    base = _runs(tmp_path, (1300.0, 400.0), 0.573, 0.700, "base")
    assert pm.main(["--baseline", *map(str, base)]) == 1
    err = capsys.readouterr().err
    assert "mme: 1700.0 vs published 1876.8" in err and "ocrbench: 700.0" in err and "realworldqa" not in err
    assert pm.main(["--baseline", *map(str, base), "--no-check"]) == 0


def test_missing_or_repeated_tasks_are_named(tmp_path):
    six, _ = _runs(tmp_path, (1440.0, 436.8), 0.573, 0.784, "base")
    with pytest.raises(SystemExit, match="no results for ocrbench"):
        pm.paper_scores([six])
    with pytest.raises(SystemExit, match="mme appears in both"):
        pm.paper_scores([six, six])


def test_runs_as_a_script(tmp_path):
    base = _runs(tmp_path, (1440.0, 436.8), 0.573, 0.784, "base")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--baseline", *map(str, base)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1876.8" in proc.stdout


def test_reference_none_reports_a_host_the_paper_did_not_train_without_its_numbers(tmp_path, capsys):
    """The llava recipe (LLaVA-NeXT) has no published number: no InternVL2-2B columns, no check."""
    base = _runs(tmp_path, (1300.0, 400.0), 0.5, 0.7, "base")
    run = _runs(tmp_path, (1310.0, 400.0), 0.5, 0.71, "run")
    assert pm.main(["--reference", "none", "--baseline", *map(str, base), "--trained", *map(str, run)]) == 0
    captured = capsys.readouterr()
    assert "published" not in captured.out and "paper" not in captured.out and "1876.8" not in captured.out
    assert "+10.0" in captured.out and "InternVL2-2B" not in captured.out + captured.err
