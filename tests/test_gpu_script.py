"""``benchmarks/gpu/run.sh`` on a CPU with ``--smoke`` (tiny shapes), so that the GPU script
cannot rot between the runs on a GPU. Its numbers mean nothing; what is checked is that every
section ran and the JSON and Markdown outputs are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_smoke_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--device", "cpu", "--smoke", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_results.json").read_text())
    assert data["smoke"] is True
    for mode in ("embed", "value", "attn_bias"):
        assert data["identity"][mode]["forward_bit_exact"] and data["identity"][mode]["generate_equal"]
    assert set(data["modes"]["sdpa"]["ratios"]) == {"embed", "value", "attn_bias"}
    assert set(data["training"]) == {"none", "embed", "value"}
    assert data["compile"]["max_abs_diff"] < 1e-2
    md = (tmp_path / "gpu_results.md").read_text()
    assert "SMOKE RUN" in md and "| attn_bias |" in md


def test_gpu_script_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    from benchmarks.gpu import run

    try:
        run.main(["--out", str(tmp_path)])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("expected a usage error naming --device cpu --smoke")
