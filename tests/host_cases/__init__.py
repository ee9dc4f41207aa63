"""One case per registered adapter, for the contract test (tests/test_contract.py).

Each module in this package exposes ``CASE: HostCase`` (or a list ``CASES``). The contract test
is parametrised over every registered adapter and fails when an adapter has no case, so adding
an adapter adds its contract cases.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class HostCase:
    """How to exercise one adapter on a tiny real host.

    Attributes:
        adapter: registered adapter name this case covers.
        make_model: builds a fresh tiny model (eval mode, fp32), deterministically.
        make_inputs: model inputs for a batch of TWO images with DIFFERENT tile counts, made by
            the host's real processor from real photographs.
        views_per_image: what the processor produced: views (tiles + thumbnail) per image.
        language_model: the module whose forward receives ``inputs_embeds`` (what the LM sees).
        config: extra GSWA config for this case (e.g. a declarative adapter spec).
        supports_generate: whether ``generate()`` works on this host here.
    """

    adapter: str
    make_model: Callable[[], torch.nn.Module]
    make_inputs: Callable[[], dict[str, Any]]
    views_per_image: list[int]
    language_model: Callable[[torch.nn.Module], torch.nn.Module]
    config: dict[str, Any] = field(default_factory=dict)
    supports_generate: bool = True
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or self.adapter


def all_cases() -> list[HostCase]:
    cases: list[HostCase] = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        module = importlib.import_module(f"{__name__}.{mod}")
        cases.extend(getattr(module, "CASES", [getattr(module, "CASE", None)]))
    return [c for c in cases if c is not None]
