"""Reading an image's views off ``input_ids``: shared by adapters whose hosts do not pass tile
counts to the model.

Every tiling host expands each view of an image into a run of placeholder tokens in the prompt.
How the runs group into images differs by family; the helpers here cover the patterns of the
families in transformers (all vectorised, no loop over runs or images). They work on a host copy
of the ids (numpy), so a forward reads its ``input_ids`` from the device once (see
[`GSWAHandle.host_ids`][gswa_plugin.handle.GSWAHandle.host_ids]), not once per operation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gswa_plugin._host import host_array


def _rows(ids: Any) -> np.ndarray:
    """``ids`` as a ``[batch, seq]`` host array (a 1-D sequence is one row)."""
    a = host_array(ids)
    return a if a.ndim == 2 else a[None]


def host_token_runs(ids: Any, token_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The contiguous runs of ``token_id`` in ``ids`` ``[batch, seq]`` (a tensor, read once to the
    host, or a host array), in row-major order, computed on the host.

    Returns:
        ``(rows, starts, lengths)``: the row of each run, the position of its first token in that
        row, and its length (three int64 numpy arrays).
    """
    mask = _rows(ids) == token_id
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)  # +1 where a run starts, -1 just after it ends
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    return rows.astype(np.int64), starts.astype(np.int64), (ends - starts).astype(np.int64)


def token_runs(input_ids: torch.Tensor, token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contiguous runs of ``token_id`` in ``input_ids`` ``[batch, seq]``, in row-major order.

    Computed on the host (one device-to-host read of ``input_ids``); see
    ``host_token_runs`` in ``gswa_plugin.adapters._layout``.

    Returns:
        ``(rows, starts, lengths)``: the row of each run, the position of its first token in that
        row, and its length (three 1-D long tensors on the device of ``input_ids``).
    """
    return tuple(torch.from_numpy(x).to(input_ids.device) for x in host_token_runs(input_ids, token_id))  # type: ignore[return-value]


def views_per_run(ids: Any, token_id: int, tokens_per_view: int) -> list[int]:
    """Views per image where each image is one run of ``token_id`` (InternVL): run length
    divided by ``tokens_per_view``, computed on the host."""
    return [int(n) // tokens_per_view for n in host_token_runs(ids, token_id)[2]]


def views_closed_by_marker(ids: Any, token_id: int, tokens_per_view: int, marker_id: int | None = None) -> list[int]:
    """Views per image where each image's LAST view is announced by a marker token.

    Idefics3 / SmolVLM write ``<row_i_col_j>`` before each tile's run and ``<global-img>`` before
    the global view's run, which closes the image; Aya Vision writes ``TILE_i`` and
    ``TILE_GLOBAL``. Without ``marker_id``, the marker is the token just before the last run of
    the batch (always a global view in these formats). Computed on the host.

    Args:
        ids: ``[batch, seq]`` token ids of the forward (a tensor or a host array).
        token_id: the image placeholder token.
        tokens_per_view: placeholder tokens of one view.
        marker_id: the token announcing the global view, if known.

    Returns:
        The number of views of each image, in the order images appear in the batch.
    """
    a = _rows(ids)
    rows, starts, lengths = host_token_runs(a, token_id)
    if rows.size == 0:
        return []
    before = np.where(starts > 0, a[rows, np.maximum(starts - 1, 0)], -1)
    marker = before[-1] if marker_id is None else marker_id
    closes = (before == marker).astype(np.int64)
    image_of_run = np.cumsum(closes) - closes
    views = np.bincount(image_of_run, weights=lengths // tokens_per_view)
    return [int(v) for v in views]


def views_opened_by_marker(ids: Any, token_id: int, tokens_per_view: int, start_id: int) -> list[int]:
    """Views per image where each image opens with a start token (``<|START_OF_IMG|>``, a BOI
    token): the placeholder tokens between two start tokens, divided by ``tokens_per_view``.
    Computed on the host."""
    flat = host_array(ids).reshape(-1)
    is_image = flat == token_id
    if not is_image.any():
        return []
    image_of_token = np.cumsum(flat == start_id) - 1
    counts = np.bincount(np.maximum(image_of_token[is_image], 0), minlength=int((flat == start_id).sum()))
    return [int(c) // tokens_per_view for c in counts[counts > 0]]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the tokens of each view ``[views, tokens, dim]``, counting only tokens where
    ``mask`` ``[views, tokens]`` is true (all of them without a mask)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def refuse_cls_summary(adapter_name: str, config: object) -> None:
    """Raise [`ConfigError`][gswa_plugin.errors.ConfigError] when ``summary: cls`` is asked of a host whose
    vision encoder has no CLS token (SigLIP-style), instead of silently summarising by a patch."""
    if getattr(config, "summary", "auto") == "cls":
        from gswa_plugin.errors import ConfigError

        raise ConfigError(
            [
                f"`summary: cls` but the '{adapter_name}' host's vision encoder has no CLS token; "
                "use `summary: mean` (or `auto`, which picks the mean here)"
            ]
        )


def views_joined_by_text(ids: Any, token_id: int, tokens_per_view: int, joiners: list[int] | tuple[int, ...]) -> list[int]:
    """Views per image where every view is its own run of placeholders (Gemma 3 pan-and-scan:
    each view opens with its own ``<start_of_image>``) and the views of one image are separated
    only by the processor's fixed text: two consecutive runs of one row belong to one image when
    every token between them is one of ``joiners``; any other token (the user's text, another
    image's "Here is the original image") starts a new image, and so does a new row. Computed on
    the host.

    Args:
        ids: ``[batch, seq]`` token ids of the forward (a tensor or a host array).
        token_id: the image placeholder token.
        tokens_per_view: placeholder tokens of one view.
        joiners: the token ids the processor writes between the views of one image (end and
            start tokens of a view, newlines, the words of its fixed sentence).

    Returns:
        The number of views of each image, in the order images appear in the batch.
    """
    a = _rows(ids)
    rows, starts, lengths = host_token_runs(a, token_id)
    if rows.size == 0:
        return []
    # Tokens that break a join, counted cumulatively along each row: a gap holds only joiners
    # when the count does not change over it.
    breaks = np.cumsum(~np.isin(a, np.asarray(list(joiners))) & (a != token_id), axis=1)
    ends = starts + lengths  # first position after each run
    new_image = np.ones(rows.size, dtype=bool)
    if rows.size > 1:
        same_row = rows[1:] == rows[:-1]
        before_next = breaks[rows[1:], np.maximum(starts[1:] - 1, 0)]
        at_end = breaks[rows[:-1], np.maximum(ends[:-1] - 1, 0)]
        new_image[1:] = ~same_row | (before_next != at_end)
    image_of_run = np.cumsum(new_image) - 1
    views = np.bincount(image_of_run, weights=lengths // tokens_per_view)
    return [int(v) for v in views]
