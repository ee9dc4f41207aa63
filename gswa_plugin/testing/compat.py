"""The compatibility matrix: which everyday host settings GSWA supports, per adapter and mode.

``tests/test_compat.py`` runs every cell on every registered adapter's tiny real host (the
contract cases) and fails when a cell listed as supported does not hold, or when a refused cell
stops raising the error it is listed with; the docs page "Compatibility" prints the table from
these declarations, so the table and the tests cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from gswa_plugin.adapters._base import Adapter
from gswa_plugin.config import MODES


@dataclass(frozen=True)
class Setting:
    """One column of the matrix.

    Attributes:
        name: short id (test ids and the table's header).
        title: what is run.
        holds: what the test asserts.
    """

    name: str
    title: str
    holds: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "gc-reentrant",
        "training step with gradient checkpointing, `use_reentrant=True`",
        "every GSWA parameter gets the gradient of the run without checkpointing (to 1e-6)",
    ),
    Setting(
        "gc-non-reentrant",
        "training step with gradient checkpointing, `use_reentrant=False`",
        "every GSWA parameter gets the gradient of the run without checkpointing (to 1e-6)",
    ),
    Setting(
        "greedy", "`generate()` greedy, batch of 2 images, left padding", "same tokens as the plain host at identity"
    ),
    Setting("sample", "`generate(do_sample=True)` with a fixed seed", "same tokens as the plain host at identity"),
    Setting(
        "beams",
        "`generate(num_beams=2)` and `num_return_sequences=2`",
        "same tokens as the plain host at identity; with non-uniform weights every beam's language model "
        "receives its row's weights (the embeddings and, in `value`/`attn_bias`, the position weights)",
    ),
    Setting(
        "deepcopy",
        "`copy.deepcopy(model)`",
        "the copy answers like the original and uses its own `gswa` module; `disable(copy)` leaves the original enabled",
    ),
    Setting(
        "save-pretrained",
        "`save_pretrained` then `from_pretrained_with_gswa(path)`",
        "the GSWA config (temperature, min_weight, mode) and the tile weights come back",
    ),
    Setting(
        "compile",
        '`torch.compile(model, backend="aot_eager")` forward',
        "logits equal eager's (to 1e-5)",
    ),
    Setting(
        "threads",
        "two threads calling one model at once, different images",
        "each thread's logits and weights equal its single-thread run",
    ),
    Setting(
        "direct-features",
        "the image-feature method called directly, without `input_ids`",
        "at identity, the plain host's features; otherwise a `LayoutError` that names `gswa_plugin.tiles`",
    ),
)

#: Cells known not to work, ``(adapter, mode, setting) -> reason`` (``"*"`` matches any). The
#: test asserts that each raises a clear error instead of answering.
REFUSED: dict[tuple[str, str, str], str] = {}

#: Settings not applicable to a host (not a GSWA limitation), ``(adapter, setting) -> why``.
NOT_APPLICABLE: dict[tuple[str, str], str] = {}

#: Built-in adapters the matrix does not run yet, ``adapter -> what is checked instead``: the docs
#: table says so rather than "yes", and ``tests/test_compat.py`` fails for an adapter left out of
#: the matrix without an entry here.
OUTSIDE_MATRIX: dict[str, str] = {
    "mllama": (
        "not run through the matrix yet (its images reach the language model as cross-attention states, "
        "which the matrix's embedding checks cannot see); `tests/test_mllama.py` checks identity at "
        "initialisation in forward and `generate()`, exact per-tile scaling of the cross-attention states, "
        "and a loud failure when the seam does not run. Checkpointing, beams, copies, compile and threads "
        "are untested for it"
    ),
}


def supported_modes(adapter: Adapter) -> tuple[str, ...]:
    """The modes an adapter supports: ``embed`` always; ``value`` and ``attn_bias`` where the
    adapter says where the language model is (it implements ``language_model``)."""
    if type(adapter).language_model is Adapter.language_model:
        return ("embed",)
    return tuple(MODES)


def cell_status(adapter: str, mode: str, setting: str) -> tuple[str, str]:
    """``("yes" | "refused" | "n/a", reason)`` of one cell."""
    for key in ((adapter, mode, setting), (adapter, "*", setting), ("*", mode, setting)):
        if key in REFUSED:
            return "refused", REFUSED[key]
    if (adapter, setting) in NOT_APPLICABLE:
        return "n/a", NOT_APPLICABLE[(adapter, setting)]
    return "yes", ""
