"""The first minute with the installed `gswa` script: fast answers, full adapter names, readable help.

Every command runs the console script that `pip install` put next to this interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gswa_plugin.cli import _catalog

SCRIPT = Path(sys.executable).parent / ("gswa.exe" if os.name == "nt" else "gswa")
#: What the fast commands must not import: each costs more than the whole command may take.
HEAVY = ("torch", "transformers")


def gswa(*args: str, columns: int = 200, **env: str) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"no `gswa` console script next to {sys.executable}: pip install -e ."
    full_env = {**os.environ, "COLUMNS": str(columns), **env}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=300, check=False)


def imported_top_level(stderr: str) -> set[str]:
    """Top-level packages in a ``PYTHONPROFILEIMPORTTIME`` report."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_cli_import_is_a_small_fraction_of_importing_torch():
    """Importing the CLI (every command registered) against importing torch, side by side in one run:
    a ratio, so a slow or busy machine does not decide it, and torch must not come in at all."""
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        def cost(module):
            code = ("import sys, time; t = time.perf_counter(); import " + module +
                    "; print(time.perf_counter() - t, 'torch' in sys.modules)")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            return float(out[0]), out[1] == "True"
        cli, torch = [], []
        for _ in range(3):  # interleaved, best of three: both see the same machine load
            cli.append(cost("gswa_plugin.cli"))
            torch.append(cost("torch"))
        print(min(c for c, _ in cli), min(t for t, _ in torch), any(loaded for _, loaded in cli))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600)
    cli_s, torch_s, torch_loaded = out.stdout.split()
    assert torch_loaded == "False", "importing gswa_plugin.cli imported torch: keep heavy imports inside the commands"
    ratio = float(cli_s) / float(torch_s)
    assert ratio < 0.5, (
        f"importing the CLI took {float(cli_s):.2f} s, {ratio:.0%} of importing torch ({float(torch_s):.2f} s)"
    )


@pytest.mark.parametrize("args", [["version"], ["--help"], ["adapters"], ["check", "{ok}"], ["schema"]])
def test_fast_commands_import_neither_torch_nor_transformers(args, tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("gswa:\n  variant: cross_attn\n  mode: value\n  adapter: internvl\n")
    res = gswa(*[a.format(ok=ok) for a in args], PYTHONPROFILEIMPORTTIME="1")
    assert res.returncode == 0, res.stderr
    heavy = imported_top_level(res.stderr) & set(HEAVY)
    assert not heavy, f"`gswa {' '.join(args)}` imported {sorted(heavy)}"


def test_builtin_table_matches_the_live_registries():
    """The fast path's table of built-in adapters and variants is what the plugins really register."""
    from gswa_plugin import plugins

    registry, sources = plugins.adapters(), plugins.adapter_sources()
    available = [i for i in _catalog.BUILTIN_ADAPTERS if i.available()]
    assert [i.name for i in available] == [n for n in registry if sources[n].startswith("gswa_plugin.")]
    for info in available:
        adapter = registry[info.name]
        assert (sources[info.name], adapter.global_position, adapter.has_cls, adapter.description) == (
            info.module,
            info.global_position,
            info.has_cls,
            info.description,
        ), info.name
    for info in _catalog.BUILTIN_ADAPTERS:
        if not info.available():
            assert info.name not in registry and info.install
    assert list(plugins.variant_sources().items()) == [
        (v, _catalog.BUILTIN_VARIANT_SOURCE) for v in _catalog.BUILTIN_VARIANTS
    ]


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_adapters_prints_full_names_at_any_width(columns):
    res = gswa("adapters", columns=columns)
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout and "..." not in res.stdout.replace("...)", "")
    for info in _catalog.BUILTIN_ADAPTERS:
        if info.available():
            assert info.name in res.stdout and info.module in res.stdout, (info.name, res.stdout)
    for v in _catalog.BUILTIN_VARIANTS:
        assert v in res.stdout


def test_adapters_lists_a_builtin_whose_host_package_is_missing():
    missing = [i for i in _catalog.BUILTIN_ADAPTERS if not i.available()]
    if not missing:
        pytest.skip("every built-in adapter's host package is installed here")
    res = gswa("adapters", columns=80)
    for info in missing:
        line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith(info.name + ":"))
        assert "needs: pip install" in line, res.stdout
    assert "llava_torch: needs: pip install 'gswa-plugin[llava]'" in res.stdout.replace("\n", " ")


def test_third_party_plugins_take_the_full_registry(tmp_path):
    """With a plugin selected the table is not enough: `gswa adapters` asks the plugin manager (and says
    what is wrong with the selection)."""
    res = gswa("adapters", GSWA_PLUGINS="no_such_plugin")
    assert res.returncode == 2
    assert "no_such_plugin" in res.stderr and "GSWA_PLUGINS" in res.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "gswa:\n  mode: embedd\n",
            "`mode` must be one of 'embed', 'value', 'attn_bias'; got 'embedd'; did you mean `embed`?",
        ),
        ("gswa:\n  summary: clss\n", "did you mean `cls`?"),
        ("gswa:\n  variant: cosin\n", "did you mean `cosine`?"),
        ("gswa:\n  adapter: internv\n", "did you mean `internvl`?"),
        ("gsaw:\n  variant: cosine\n", "found `gsaw:`; did you mean `gswa:`?"),
    ],
)
def test_check_suggests_the_closest_value_and_top_level_key(tmp_path, text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    res = gswa("check", str(bad), columns=400)
    assert res.returncode == 1
    assert expected in " ".join(res.stderr.split()), res.stderr


def test_help_shows_no_types_for_flags_and_keeps_sentences_whole():
    res = gswa("diagnose", "--help", columns=100)
    assert res.returncode == 0
    assert "<bool>" not in res.stdout
    assert "--fail" in res.stdout and "--help" in res.stdout
    res = gswa("train", "--help", columns=200)
    # the docstring wraps in the source; the help joins the paragraph instead of breaking it mid-sentence
    assert "run the same recipe with accelerate launch --config_file" in res.stdout, res.stdout
