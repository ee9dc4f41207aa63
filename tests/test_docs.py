"""Meta-tests of the documentation: the examples run, and the generated and hand-written
references cover every config field, hook and error class."""

from __future__ import annotations

import importlib.util
import inspect
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import tomllib
import torch
import yaml

from gswa_plugin import errors, hookspecs
from gswa_plugin.config import GSWAConfig, field_docs
from gswa_plugin.plugins import ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"


def _docs_hooks():
    spec = importlib.util.spec_from_file_location("gswa_docs_hooks", DOCS / "_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _MkdocsLoader(yaml.SafeLoader):
    """Reads mkdocs.yml, whose `!!python/name:` tags only mkdocs resolves."""


_MkdocsLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _mkdocs_config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_MkdocsLoader)


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# --- the examples the docs include run as written --------------------------------------------
def test_quickstart_example_runs(tmp_path, monkeypatch, capsys):
    shutil.copy(EXAMPLES / "gswa.yaml", tmp_path / "gswa.yaml")
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(EXAMPLES / "quickstart.py"))
    assert (tmp_path / "gswa_out" / "gswa.safetensors").is_file()
    assert (tmp_path / "gswa_out" / "gswa_config.yaml").is_file()
    assert not hasattr(namespace["model"], "gswa")  # disabled again
    assert isinstance(namespace["out"], torch.Tensor)
    printed = capsys.readouterr().out
    assert "tensor(" in printed  # the weights of the one image


def test_quickstart_example_is_ten_lines_and_the_readmes():
    code = (EXAMPLES / "quickstart.py").read_text(encoding="utf-8")
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    python_blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert code.strip() in [b.strip() for b in python_blocks], "docs/examples/quickstart.py differs from the README's"


def test_quickstart_shows_the_readme_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [b.strip() for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S) if "python3 -m venv" in b]
    assert len(commands) == 2
    page = _page("quickstart.md")
    for command in commands:
        assert command in page


def test_plugin_example_runs(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "plugin", raising=False)
    runpy.run_path(str(EXAMPLES / "use_plugin.py"))
    plugin = sys.modules["plugin"]
    (weights,) = plugin.LOGGED[-1]  # one image
    assert len(weights) > 1 and abs(sum(weights) / len(weights) - 1) < 1e-5
    assert len(set(round(w, 6) for w in weights)) > 1  # the example variant does weight the tiles
    assert "[[" in capsys.readouterr().out


def test_plugin_pyproject_example_uses_the_entry_point_group():
    data = tomllib.loads((EXAMPLES / "plugin_pyproject.toml").read_text(encoding="utf-8"))
    assert list(data["project"]["entry-points"]) == [ENTRY_POINT_GROUP]


def test_every_included_snippet_exists():
    for page in DOCS.rglob("*.md"):
        for path in re.findall(r'--8<-- "([^"]+)"', page.read_text(encoding="utf-8")):
            assert (ROOT / path).is_file(), f"{page.relative_to(ROOT)} includes missing {path}"


# --- nav --------------------------------------------------------------------------------------
def test_every_page_is_in_the_nav():
    hooks = _docs_hooks()
    in_nav = set(hooks.nav_pages(_mkdocs_config()["nav"]))
    pages = {
        str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "examples" not in p.parts and "assets" not in p.parts
    }
    missing = sorted(pages - in_nav)
    assert not missing, f"add these pages to the nav in mkdocs.yml: {missing}"


def test_nav_leaves_out_pages_not_written_yet(tmp_path):
    hooks = _docs_hooks()
    (tmp_path / "a.md").write_text("# A")
    nav = [{"Home": "a.md"}, {"Later": "later.md"}, {"Section": [{"B": "missing/b.md"}]}, {"Out": "https://x.org/"}]
    assert hooks.prune_nav(nav, tmp_path) == [{"Home": "a.md"}, {"Out": "https://x.org/"}]


# --- configuration reference ------------------------------------------------------------------
def test_configuration_reference_covers_every_field():
    hooks = _docs_hooks()
    assert hooks.CONFIG_MARKER in _page("configuration.md")
    rendered = hooks.render(_page("configuration.md"))
    for name, type_name, default, help_text in field_docs():
        assert f"### `{name}`" in rendered
        assert help_text in rendered
        assert f"`{type_name}`" in rendered
    assert GSWAConfig().to_yaml().strip() in rendered


# --- hooks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_has_its_exact_signature_on_the_hooks_page(name):
    hooks = _docs_hooks()
    assert hooks.HOOKS_MARKER in _page("hooks.md")
    rendered = hooks.render(_page("hooks.md"))
    spec = getattr(hookspecs, name)
    signature = f"def {name}{inspect.signature(spec)}".replace("'", "")
    assert f"## `{name}`" in rendered
    assert signature in rendered
    for param in inspect.signature(spec).parameters:
        assert f"**`{param}`**" in rendered  # each argument is described


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_has_a_test(name):
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != Path(__file__).name]
    assert any(name in p.read_text(encoding="utf-8") for p in tests), f"no test mentions {name}"


# --- errors -----------------------------------------------------------------------------------
def _error_classes() -> list[type]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, errors.GSWAError) and obj.__module__ == errors.__name__
    ]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_is_on_the_troubleshooting_page(cls):
    assert f"## {cls.__name__}\n" in _page("troubleshooting.md"), (
        f"docs/troubleshooting.md needs a section `## {cls.__name__}` with its causes and fixes"
    )


def test_adapters_table_lists_every_builtin_adapter():
    from gswa_plugin.plugins import adapters

    table = _docs_hooks().render_adapters_table()
    for name in adapters():  # the tests load built-in plugins only
        assert f"| `{name}` |" in table
