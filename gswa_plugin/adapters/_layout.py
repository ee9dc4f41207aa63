"""Reading an image's views off ``input_ids``: shared by adapters whose hosts do not pass tile
counts to the model.

Every tiling host expands each view of an image into a run of placeholder tokens in the prompt.
How the runs group into images differs by family; the helpers here cover the patterns of the
families in transformers (all vectorised, no loop over runs or images).
"""

from __future__ import annotations

import torch


def token_runs(input_ids: torch.Tensor, token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contiguous runs of ``token_id`` in ``input_ids`` ``[batch, seq]``, in row-major order.

    Returns:
        ``(rows, starts, lengths)``: the row of each run, the position of its first token in that
        row, and its length (three 1-D long tensors).
    """
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    mask = ids == token_id
    prev = torch.zeros_like(mask)
    prev[:, 1:] = mask[:, :-1]
    start_mask = mask & ~prev
    rows, starts = start_mask.nonzero(as_tuple=True)
    if rows.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=ids.device)
        return empty, empty, empty
    run_id = torch.cumsum(start_mask.flatten().long(), 0) - 1
    lengths = torch.bincount(run_id[mask.flatten()], minlength=rows.numel())
    return rows, starts, lengths


def views_closed_by_marker(
    input_ids: torch.Tensor, token_id: int, tokens_per_view: int, marker_id: int | None = None
) -> list[int]:
    """Views per image where each image's LAST view is announced by a marker token.

    Idefics3 / SmolVLM write ``<row_i_col_j>`` before each tile's run and ``<global-img>`` before
    the global view's run, which closes the image; Aya Vision writes ``TILE_i`` and
    ``TILE_GLOBAL``. Without ``marker_id``, the marker is the token just before the last run of
    the batch (always a global view in these formats).

    Args:
        input_ids: ``[batch, seq]`` token ids of the forward.
        token_id: the image placeholder token.
        tokens_per_view: placeholder tokens of one view.
        marker_id: the token announcing the global view, if known.

    Returns:
        The number of views of each image, in the order images appear in the batch.
    """
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    rows, starts, lengths = token_runs(ids, token_id)
    if rows.numel() == 0:
        return []
    before = ids[rows, (starts - 1).clamp_min(0)]
    before = torch.where(starts > 0, before, torch.full_like(before, -1))
    marker = before[-1] if marker_id is None else torch.tensor(marker_id, device=ids.device)
    closes = before == marker
    image_of_run = torch.cumsum(closes.long(), 0) - closes.long()
    views = torch.bincount(image_of_run, weights=(lengths // tokens_per_view).double())
    return [int(v) for v in views.tolist()]


def views_opened_by_marker(input_ids: torch.Tensor, token_id: int, tokens_per_view: int, start_id: int) -> list[int]:
    """Views per image where each image opens with a start token (``<|START_OF_IMG|>``, a BOI
    token): the placeholder tokens between two start tokens, divided by ``tokens_per_view``."""
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    flat = ids.flatten()
    is_start = flat == start_id
    is_image = flat == token_id
    if not bool(is_image.any()):
        return []
    image_of_token = torch.cumsum(is_start.long(), 0) - 1
    owners = image_of_token[is_image]
    n_images = int(is_start.sum())
    counts = torch.bincount(owners.clamp_min(0), minlength=n_images)
    counts = counts[counts > 0]
    return [int(c) // tokens_per_view for c in counts.tolist()]


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


def views_joined_by_text(
    input_ids: torch.Tensor, token_id: int, tokens_per_view: int, joiners: list[int] | tuple[int, ...]
) -> list[int]:
    """Views per image where every view is its own run of placeholders (Gemma 3 pan-and-scan:
    each view opens with its own ``<start_of_image>``) and the views of one image are separated
    only by the processor's fixed text: two consecutive runs of one row belong to one image when
    every token between them is one of ``joiners``; any other token (the user's text, another
    image's "Here is the original image") starts a new image, and so does a new row.

    Args:
        input_ids: ``[batch, seq]`` token ids of the forward.
        token_id: the image placeholder token.
        tokens_per_view: placeholder tokens of one view.
        joiners: the token ids the processor writes between the views of one image (end and
            start tokens of a view, newlines, the words of its fixed sentence).

    Returns:
        The number of views of each image, in the order images appear in the batch.
    """
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    rows, starts, lengths = token_runs(ids, token_id)
    if rows.numel() == 0:
        return []
    is_joiner = torch.isin(ids, torch.as_tensor(list(joiners), dtype=ids.dtype, device=ids.device))
    # Tokens that break a join, counted cumulatively along each row: a gap [a, b) holds only
    # joiners when the count does not change over it.
    breaks = torch.cumsum((~is_joiner & (ids != token_id)).long(), dim=1)
    ends = starts + lengths  # first position after each run
    new_image = torch.ones(rows.numel(), dtype=torch.bool, device=ids.device)
    if rows.numel() > 1:
        same_row = rows[1:] == rows[:-1]
        before_next = breaks[rows[1:], (starts[1:] - 1).clamp_min(0)]
        at_end = breaks[rows[:-1], (ends[:-1] - 1).clamp_min(0)]
        new_image[1:] = ~same_row | (before_next != at_end)
    image_of_run = torch.cumsum(new_image.long(), 0) - 1
    views = torch.bincount(image_of_run, weights=(lengths // tokens_per_view).double())
    return [int(v) for v in views.tolist()]
