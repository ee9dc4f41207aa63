"""One case per registered adapter, for the contract test (tests/test_contract.py).

Each module in this package exposes ``CASE: HostCase`` (or a list ``CASES``). The contract test
is parametrised over every registered adapter and fails when an adapter has no case, so adding
an adapter adds its contract cases. Each case runs through the public
:func:`gswa_plugin.testing.check_adapter` (``case.check()``).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from gswa_plugin.testing.contract import AdapterCase


@dataclass
class HostCase(AdapterCase):
    """How to exercise one registered adapter on a tiny real host: a
    :class:`gswa_plugin.testing.AdapterCase` whose ``adapter`` is required.

    Attributes:
        adapter: registered adapter name this case covers (the contract enables exactly it).
        make_model: builds a fresh tiny model (eval mode, fp32), deterministically.
        make_inputs: model inputs for a batch of TWO images with DIFFERENT tile counts, made by
            the host's real processor from real photographs.
        views_per_image: what the processor produced: views (tiles + thumbnail) per image.
        language_model: the module whose forward receives ``inputs_embeds`` (what the LM sees).
        config: extra GSWA config for this case (e.g. a declarative adapter's spec).
        supports_generate: whether ``generate()`` works on this host here.
    """

    def __post_init__(self) -> None:
        if not self.adapter:
            raise TypeError("HostCase needs adapter=<the registered adapter this case covers>")
        super().__post_init__()


def all_cases() -> list[HostCase]:
    cases: list[HostCase] = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        module = importlib.import_module(f"{__name__}.{mod}")
        cases.extend(getattr(module, "CASES", [getattr(module, "CASE", None)]))
    return [c for c in cases if c is not None]
