"""Testing helpers for GSWA and for adapter authors.

This package holds the tiny test hosts ([`tiny`][gswa_plugin.testing.tiny],
[`tiny_more`][gswa_plugin.testing.tiny_more], [`tiny_hosts`][gswa_plugin.testing.tiny_hosts]: real
transformers classes with small random configs, built offline), the stand-ins for host classes
that exist only as remote code ([`standins`][gswa_plugin.testing.standins]), and the adapter contract
check ([`contract`][gswa_plugin.testing.contract])::

    from gswa_plugin.testing import check_adapter

    report = check_adapter(make_model, make_inputs, views_per_image=[5, 4],
                           language_model="model.language_model", adapter="my_adapter")
    report.assert_passed()

The names below are imported from [`contract`][gswa_plugin.testing.contract] on first use: importing
this package (or one of the tiny-host modules) does not load the contract check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "CHECKS",
    "AdapterCase",
    "CheckResult",
    "ContractReport",
    "check_adapter",
    "check_model",
    "view_of_position",
]

if TYPE_CHECKING:  # pragma: no cover
    from gswa_plugin.testing.contract import (
        CHECKS,
        AdapterCase,
        CheckResult,
        ContractReport,
        check_adapter,
        check_model,
        view_of_position,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gswa_plugin.testing import contract

        return getattr(contract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
