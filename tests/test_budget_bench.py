"""The token-budget benchmark drivers run end to end at smoke-test size and write their tables."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_speed_benchmark_writes_interleaved_side_by_side_rows(tmp_path):
    from benchmarks.budget import speed

    result = speed.main(["--shapes", "tiny", "--repeats", "2", "--decode-tokens", "2", "--keeps", "1.0", "0.25",
                         "--out", str(tmp_path)])
    rows = result["rows"]
    assert rows["0.25"]["visual_tokens"] < rows["1.0"]["visual_tokens"]
    assert len(rows["0.25"]["speedup_cpu_per_repeat"]) == 2  # one ratio per repeat, same-repeat baseline
    assert rows["0.25"]["peak_mb"] < rows["1.0"]["peak_mb"]  # fewer tokens, smaller prefill tensors
    table = (tmp_path / "budget_speed_table.md").read_text()
    assert "| 0.25 |" in table and (tmp_path / "budget_speed.png").stat().st_size > 0
    assert json.loads((tmp_path / "budget_speed.json").read_text())["settings"]["shapes"] == "tiny"


def test_quality_benchmark_reports_every_seed_and_method(tmp_path):
    from benchmarks.budget import quality

    result = quality.main(["--seeds", "0", "1", "--steps", "2", "--train-images", "32", "--eval-images", "16",
                           "--keeps", "0.5", "--sharpness", "0.5", "--in-tile", "norm", "summary", "--out", str(tmp_path)])
    assert [r["seed"] for r in result["rows"]] == [0, 1]
    for r in result["rows"]:
        assert {"uncompressed", "gswa@0.5", "uniform@0.5", "random@0.5", "globalcom@0.5", "gswa@0.5/summary",
                "gswa@0.5^0.5"} <= set(r)
    table = (tmp_path / "budget_quality_table.md").read_text()
    assert "| seed 0 | seed 1 | mean |" in table and "globalcom keep 0.5" in table
