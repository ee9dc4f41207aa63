"""Every code block of the pages a new user reads first runs as written, and the API page's
import paths hold.

Pages: Install, Quickstart, Concepts, Configuration, Adapters, API. Each page's blocks run in
order, in a fresh folder, the way a reader would run them:

* ``python``: executed (an included ``docs/examples/*.py`` as that file, with ``docs/examples``
  on the path); plugins a block registers are unregistered after it;
* ``yaml``: a block with a ``gswa:`` key is validated like ``gswa check`` does, and the page's
  first one is saved as ``gswa.yaml`` for the commands that follow (the pages say so);
* ``bash``: each command (split on ``&&``) runs: ``gswa ...`` through the CLI, ``python -c ...``
  in a subprocess. Installing commands are not run (they would need the network): ``python3 -m
  venv`` and ``. .venv/bin/activate`` must be the CI's own, ``pip install`` may name only this
  package, its extras and the CI's torch pin, and ``python -m pytest`` / ``mkdocs build`` are
  what the CI runs itself.

Placeholders: ``my.jpg`` is a photograph written into the folder before the commands run.
"""

from __future__ import annotations

import ast
import importlib
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PAGES = ["install.md", "quickstart.md", "concepts.md", "configuration.md", "adapters.md", "api.md"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CI_RUN = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$')
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|mod|attr|exc|obj|const):`")


def code_blocks(page: str) -> list[tuple[str, str, str | None]]:
    """(language, code, included file or None) of every fenced block of a page, in order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    out = []
    for lang, body in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        m = SNIPPET.match(body.strip())
        if m:
            out.append((lang, (ROOT / m.group(1)).read_text(encoding="utf-8"), m.group(1)))
        else:
            out.append((lang, body, None))
    return out


# --- bash ------------------------------------------------------------------------------------------
def _commands(block: str) -> list[str]:
    """The commands of a bash block: comments dropped, continuation lines joined, ``&&`` split."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return [part.strip() for line in lines for part in line.split("&&")]


def _check_pip(command: str) -> None:
    """``pip install`` may name only torch at the CI's pin, this package (checkout or index name)
    and its extras."""
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    name = PYPROJECT["project"]["name"]
    for arg in shlex.split(command)[2:]:
        if arg.startswith("-") and arg != "-e":
            continue
        if arg.startswith("torch=="):
            assert f"pip install {arg}" in CI_RUN, f"{command!r}: the CI installs another torch"
            continue
        if arg == "-e":
            continue
        m = re.fullmatch(r"(\.|[\w-]+)(?:\[([\w,-]+)\])?", arg)
        assert m and m.group(1) in (".", name), f"{command!r}: installs {arg!r}, not this package"
        for extra in filter(None, (m.group(2) or "").split(",")):
            assert extra in extras, f"{command!r}: no extra {extra!r} in pyproject.toml"


def run_command(command: str, cwd: Path) -> None:
    argv = shlex.split(command)
    if command in ("python3 -m venv .venv", ". .venv/bin/activate"):
        assert command in CI_RUN.replace("\n", " ")
    elif argv[:2] == ["pip", "install"]:
        _check_pip(command)
    elif command == "python -m pytest -q":
        assert command in CI_RUN
    elif argv[:2] == ["mkdocs", "build"]:
        assert "mkdocs build --strict" in (ROOT / ".ci" / "steps" / "10-docs.sh").read_text()
    elif argv[0] == "gswa":
        done = subprocess.run(
            [sys.executable, "-m", "gswa_plugin.cli", *argv[1:]],
            check=False,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"
    elif argv[0] == "python" and argv[1] == "-c":
        done = subprocess.run(
            [sys.executable, *argv[1:]], check=False, cwd=cwd, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command!r} failed:\n{done.stderr}"
    else:
        pytest.fail(f"a docs command this test does not know how to run: {command!r}")


# --- the pages ---------------------------------------------------------------------------------------
def _registered() -> set[str]:
    from gswa_plugin.plugins import get_plugin_manager

    return {name for name, _ in get_plugin_manager().list_name_plugin()}


@pytest.mark.parametrize("page", PAGES)
def test_every_code_block_runs_as_written(page, tmp_path, monkeypatch):
    from gswa_plugin.config import GSWAConfig
    from gswa_plugin.plugins import check_config, unregister_plugin
    from gswa_plugin.testing.tiny import sample_image

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    sample_image("coffee").save(tmp_path / "my.jpg")  # the reader's own image
    saved_yaml = False
    ran: set[str] = set()
    namespace: dict = {"__name__": "__main__"}
    for lang, code, included in code_blocks(page):
        where = f"{page}: {included or code.strip().splitlines()[0]!r}"
        if lang == "python":
            before = _registered()
            try:
                if included:
                    for module in ("custom_adapter", "plugin"):
                        sys.modules.pop(module, None)
                    runpy.run_path(str(ROOT / included), run_name="__main__")
                else:
                    exec(compile(code, where, "exec"), namespace)
            finally:
                for name in _registered() - before:
                    unregister_plugin(name=name)
        elif lang == "yaml":
            data = yaml.safe_load(code)
            if isinstance(data, dict) and "gswa" in data:
                check_config(GSWAConfig.from_dict(data))
                if not saved_yaml:
                    (tmp_path / "gswa.yaml").write_text(code, encoding="utf-8")
                    saved_yaml = True
        elif lang == "bash":
            for command in _commands(code):
                if command not in ran:  # a page may repeat a command; a reader runs it once
                    run_command(command, tmp_path)
                    ran.add(command)
        elif lang in ("toml", "text", ""):
            continue
        else:
            pytest.fail(f"{where}: a {lang!r} block this test does not run")


def test_the_pages_have_code_blocks_and_the_commands_are_known():
    languages = {lang for page in PAGES for lang, _, _ in code_blocks(page)}
    assert {"python", "bash", "yaml"} <= languages


# --- the API page: names importable from where it says -----------------------------------------------
def _api_sections() -> list[tuple[str, list[str], list[str]]]:
    """(section title, import code, documented paths) per ``##`` section of the API page."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    out = []
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        title = section.splitlines()[0]
        code = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
        out.append((title, code, re.findall(r"^::: ([\w.]+)", section, flags=re.MULTILINE)))
    return out


def _imported(blocks: list[str]) -> set[str]:
    """``from a.b import c, d`` in the code blocks -> {"a.b.c", "a.b.d"}."""
    return {
        f"{node.module}.{alias.name}"
        for block in blocks
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


@pytest.mark.parametrize("title,imports,paths", _api_sections(), ids=lambda x: x if isinstance(x, str) else "")
def test_api_page_names_import_from_where_it_says(title, imports, paths):
    assert paths, f"API section {title!r} documents nothing"
    imported = _imported(imports)
    for path in paths:
        module_name, _, name = path.rpartition(".")
        try:
            module = importlib.import_module(path)  # a whole module (gswa_plugin.errors)
            continue
        except ModuleNotFoundError:
            pass
        module = importlib.import_module(module_name)
        assert hasattr(module, name), f"API page, {title}: `from {module_name} import {name}` fails"
        assert path in imported, f"API page, {title}: documents {path} but its import line does not show it"
    for full in imported:  # and every import line shown works
        module_name, _, name = full.rpartition(".")
        assert hasattr(importlib.import_module(module_name), name), f"API page, {title}: {full} is not importable"


def test_api_page_documents_every_top_level_export():
    import gswa_plugin
    from gswa_plugin import errors

    documented = {p for _, _, paths in _api_sections() for p in paths}
    documented |= {p for _, imports, _ in _api_sections() for p in _imported(imports)}  # hookimpl: shown, not rendered
    error_names = {n for n in gswa_plugin.__all__ if isinstance(getattr(gswa_plugin, n), type) and n in vars(errors)}
    assert "gswa_plugin.errors" in documented
    missing = [
        n
        for n in gswa_plugin.__all__
        if n != "__version__" and n not in error_names and f"gswa_plugin.{n}" not in documented
    ]
    assert not missing, f"add these `gswa_plugin` exports to docs/api.md as `::: gswa_plugin.NAME`: {missing}"


def test_no_sphinx_roles_in_docstrings_or_pages():
    """mkdocstrings renders Markdown: a Sphinx role (:class:`X`) shows as raw text."""
    found = []
    for path in sorted((ROOT / "gswa_plugin").rglob("*.py")) + sorted(DOCS.rglob("*.md")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ROLE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "use [`Name`][full.path] instead of Sphinx roles:\n" + "\n".join(found)


def test_no_mermaid_fences():
    """The theme loads mermaid from a CDN: offline it shows the chart's source. Draw inline SVG."""
    pages = [p for p in DOCS.rglob("*.md") if "```mermaid" in p.read_text(encoding="utf-8")]
    assert not pages, f"mermaid charts in {pages}: generate an inline SVG in docs/_hooks.py instead"


def test_install_page_lists_every_extra():
    page = (DOCS / "install.md").read_text(encoding="utf-8")
    for extra in PYPROJECT["project"]["optional-dependencies"]:
        assert f"| `{extra}` |" in page, f"docs/install.md: the extras table lacks `{extra}`"


def test_measured_page_is_linked_from_home_and_generated():
    assert "(measured.md)" in (DOCS / "index.md").read_text(encoding="utf-8")
    hooks = runpy.run_path(str(DOCS / "_hooks.py"))
    rendered = hooks["render"]((DOCS / "measured.md").read_text(encoding="utf-8"))
    for step in sorted((ROOT / ".ci" / "steps").glob("*.sh")):
        assert f"`.ci/steps/{step.name}`" in rendered
    assert "<!-- gswa:" not in rendered


def test_license_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
