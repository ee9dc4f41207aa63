"""What the built-in plugins register, known without importing torch, for the fast CLI commands.

``gswa adapters`` and ``gswa check`` answer from this table when no third-party plugin is
installed (or ``GSWA_PLUGINS`` selects none), so they do not import torch and the adapters.
``tests/test_cli_fast.py`` compares the table with the live registries, so it cannot drift.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from importlib.metadata import entry_points


@dataclass(frozen=True)
class AdapterInfo:
    """One built-in adapter as ``gswa adapters`` lists it."""

    name: str
    module: str
    global_position: str
    has_cls: bool
    description: str
    #: Importable package the adapter needs (it registers only where that imports), and how to install it.
    needs_package: str | None = None
    install: str | None = None

    def available(self) -> bool:
        if self.needs_package is None:
            return True
        try:
            return importlib.util.find_spec(self.needs_package) is not None
        except (ImportError, ValueError):
            return False


_A = "gswa_plugin.adapters."
BUILTIN_ADAPTERS: tuple[AdapterInfo, ...] = (
    AdapterInfo(
        "internvl",
        _A + "internvl",
        "last",
        True,
        "transformers InternVLForConditionalGeneration / InternVLModel (InternVL2.5/3 -hf, converted InternVL2)",
    ),
    AdapterInfo(
        "idefics3", _A + "idefics3", "last", False, "transformers Idefics3ForConditionalGeneration / Idefics3Model"
    ),
    AdapterInfo(
        "smolvlm", _A + "idefics3", "last", False, "transformers SmolVLMForConditionalGeneration / SmolVLMModel"
    ),
    AdapterInfo(
        "aya_vision",
        _A + "aya_vision",
        "last",
        False,
        "transformers AyaVisionForConditionalGeneration / AyaVisionModel",
    ),
    AdapterInfo(
        "mllama",
        _A + "mllama",
        "none",
        False,
        "transformers MllamaForConditionalGeneration (Llama 3.2 Vision): weights act on the cross-attention states",
    ),
    AdapterInfo(
        "llava_next",
        _A + "llava_next",
        "first",
        True,
        "transformers LlavaNextForConditionalGeneration / LlavaNextModel (LLaVA-1.6 anyres)",
    ),
    AdapterInfo(
        "llava_onevision",
        _A + "llava_onevision",
        "first",
        False,
        "transformers LlavaOnevisionForConditionalGeneration / LlavaOnevisionModel (SigLIP, anyres_max)",
    ),
    AdapterInfo(
        "internvl_chat",
        _A + "internvl_chat",
        "last",
        True,
        "InternVL2 remote code InternVLChatModel (trust_remote_code; SleighVL's base)",
    ),
    AdapterInfo(
        "declarative",
        _A + "declarative",
        "declared",
        False,
        "any tiling model, described in YAML (`declare:` in the gswa block); used only when named",
    ),
    AdapterInfo(
        "llava_torch",
        _A + "llava_torch",
        "first",
        True,
        "the llava package (PyPI llava-torch, LLaVA-NeXT repository): LlavaLlamaForCausalLM and other "
        "LlavaMetaForCausalLM models, anyres base image first",
        needs_package="llava",
        install="pip install 'gswa-plugin[llava]' && pip install --no-deps llava-torch==1.2.2.post1",
    ),
)

#: The built-in weighting variants (``gswa_plugin.weighting.BUILTIN_VARIANTS`` and ``TEXT_VARIANTS``) and their plugin.
BUILTIN_VARIANTS: tuple[str, ...] = ("self_attn", "cross_attn", "cosine", "text_guided", "text_cross_attn")
BUILTIN_VARIANT_SOURCE = "gswa_plugin.builtin"


def third_party_plugins() -> list[str]:
    """Names of the installed third-party plugins that would load (``GSWA_PLUGINS`` applied).

    Mirrors ``gswa_plugin.plugins``' selection; when the variable names a plugin that is not
    installed, that name is returned too, so the caller takes the full path and reports it.
    """
    found = sorted(ep.name for ep in entry_points(group="gswa"))
    raw = os.environ.get("GSWA_PLUGINS")
    if raw is None:
        return found
    return sorted({n.strip() for n in raw.split(",") if n.strip()})


def builtin_only() -> bool:
    """Whether the registries hold exactly the built-in plugins' items (this table is then exact)."""
    return not third_party_plugins()
