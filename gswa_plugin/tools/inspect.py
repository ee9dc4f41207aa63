"""The paper's inspection experiments as tools: tile removal, variant ablation, diagnostics.

* **Tile removal** ([`RemovalSpec`][gswa_plugin.tools.inspect.RemovalSpec],
  [`TileRemoval`][gswa_plugin.tools.inspect.TileRemoval],
  [`run_with_removal`][gswa_plugin.tools.inspect.run_with_removal]): take
  away the ``k`` tiles with the highest or lowest GSWA weight (or cosine similarity of their
  summary to the thumbnail's, the paper's "most similar to the global image"), or every tile
  whose weight is under a threshold. ``mode="zero"`` zeroes the chosen tiles' features at the
  seam (a wrapper on the ``gswa_process_tiles`` hook, so it works with every adapter);
  ``mode="drop"`` removes the chosen tiles' views from ``pixel_values`` together with their image
  tokens in ``input_ids``, so the language model sees a shorter sequence and GSWA weighs the
  tiles that remain (hosts whose views are fixed-size blocks of image tokens: InternVL).
* **Variant ablation** ([`ablate_on_images`][gswa_plugin.tools.inspect.ablate_on_images], and over an
  lmms-eval task with [`ablate_on_task`][gswa_plugin.tools.inspect.ablate_on_task]): the same inputs
  under several GSWA checkpoints and without GSWA.
* **Diagnostics** ([`diagnose_images`][gswa_plugin.tools.inspect.diagnose_images]): the failure signatures of
  [`gswa_plugin.tools.diagnostics`][gswa_plugin.tools.diagnostics] over a set of images.

Over a folder of images there are no labels, so a change is measured on the model's next-token
distribution after the prompt (the first answer token): its largest logit change, the KL
divergence from the reference, and whether the top token stays the same. Over an lmms-eval task
the task's own metrics are compared.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from gswa_plugin import api
from gswa_plugin.errors import ConfigError, LayoutError
from gswa_plugin.handle import get_handle, is_enabled
from gswa_plugin.hookspecs import hookimpl
from gswa_plugin.layout import TileBatch, TileLayout
from gswa_plugin.plugins import register_plugin, unregister_plugin
from gswa_plugin.tools.diagnostics import Thresholds, failure_signatures, weight_stats

#: Adapters whose views are fixed-size contiguous blocks of image tokens, one block per view in
#: the order of ``pixel_values``: only these support ``mode="drop"``.
DROP_ADAPTERS = ("internvl",)


# --- tile removal ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemovalSpec:
    """Which tiles to take away, and how.

    Attributes:
        k: number of tiles removed per image (capped at the image's tile count). 0 removes none.
        by: rank tiles by ``"weight"`` (GSWA's weight) or ``"similarity"`` (cosine similarity of
            the tile's summary to the thumbnail's).
        which: remove the ``"highest"`` or the ``"lowest"`` ranked tiles.
        threshold: if set, remove every tile whose GSWA weight is below it (instead of ``k``).
        mode: ``"zero"`` (zero the tiles' features at the seam) or ``"drop"`` (remove the tiles
            and their image tokens from the inputs).
    """

    k: int = 0
    by: str = "weight"
    which: str = "highest"
    threshold: float | None = None
    mode: str = "zero"

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 0:
            problems.append(f"k must be an integer >= 0, got {self.k!r}")
        if self.by not in ("weight", "similarity"):
            problems.append(f"by must be 'weight' or 'similarity', got {self.by!r}")
        if self.which not in ("highest", "lowest"):
            problems.append(f"which must be 'highest' or 'lowest', got {self.which!r}")
        if self.mode not in ("zero", "drop"):
            problems.append(f"mode must be 'zero' or 'drop', got {self.mode!r}")
        if self.threshold is not None and self.k:
            problems.append("give either k or threshold, not both")
        if self.threshold is not None and self.by != "weight":
            problems.append("threshold applies to GSWA weights: use by='weight' with it")
        if problems:
            raise ConfigError(problems, "tile removal")

    @property
    def active(self) -> bool:
        """Whether any tile can be removed."""
        return self.threshold is not None or self.k > 0

    def describe(self) -> str:
        """One line saying what is removed."""
        if self.threshold is not None:
            what = f"tiles with weight < {self.threshold:g}"
        elif not self.k:
            what = "no tile"
        else:
            what = f"{self.k} {self.which}-{self.by} tile{'s' if self.k > 1 else ''}"
        return f"{self.mode}: {what}"


def tile_similarity(batch: TileBatch) -> list[torch.Tensor | None]:
    """Per image, the cosine similarity of each tile's summary to the thumbnail's (host tile
    order); ``None`` for an image without a thumbnail."""
    out: list[torch.Tensor | None] = []
    s = batch.summaries.detach().float()
    start = 0
    for n, glob in zip(batch.layout.views_per_image, batch.layout.global_indices()):
        if glob is None:
            out.append(None)
        else:
            tiles = [v for v in range(start, start + n) if v != glob]
            out.append(F.cosine_similarity(s[tiles], s[glob][None], dim=-1))
        start += n
    return out


def select_tiles(batch: TileBatch, spec: RemovalSpec) -> list[list[int]]:
    """Per image, the positions (0-based, host tile order, thumbnail excluded) of the tiles that
    ``spec`` removes, ascending. Images without a thumbnail keep every tile (there is no global
    view to compare with). Ties keep the host's order (a stable sort)."""
    if batch.weights is None:
        raise LayoutError("tile removal needs the GSWA weights of the batch: run it after GSWA's processing")
    weights = batch.tile_weights()
    sims = tile_similarity(batch) if spec.by == "similarity" else [None] * len(weights)
    out: list[list[int]] = []
    for w, sim, glob in zip(weights, sims, batch.layout.global_indices()):
        if glob is None or not spec.active:
            out.append([])
            continue
        w = w.detach().float().cpu()
        if spec.threshold is not None:
            out.append([i for i, x in enumerate(w.tolist()) if x < spec.threshold])
            continue
        key = (sim if spec.by == "similarity" else w).cpu()
        order = torch.sort(key, descending=spec.which == "highest", stable=True).indices
        out.append(sorted(order[: min(spec.k, key.numel())].tolist()))
    return out


def views_of_tiles(layout: TileLayout, positions: Sequence[Sequence[int]]) -> list[int]:
    """Flat view indices of per-image tile positions (thumbnail excluded)."""
    views: list[int] = []
    start = 0
    for n, glob, pos in zip(layout.views_per_image, layout.global_indices(), positions):
        offset = 1 if (glob is not None and layout.global_position == "first") else 0
        views.extend(start + offset + p for p in pos)
        start += n
    return views


class TileRemoval:
    """A plugin zeroing the chosen tiles' features after GSWA has weighted them.

    It wraps ``gswa_process_tiles`` (new-style pluggy wrapper), so it works on any adapter. With
    ``mode="drop"`` it does nothing at the seam (the inputs were already reduced by
    [`drop_tiles`][gswa_plugin.tools.inspect.drop_tiles]). ``removed`` holds the positions removed in the latest
    forward.
    """

    def __init__(self, spec: RemovalSpec):
        self.spec = spec
        self.removed: list[list[int]] = []

    @hookimpl(wrapper=True)
    def gswa_process_tiles(self, batch: TileBatch, handle: Any) -> Any:
        result = yield
        if self.spec.mode == "drop" and self.spec.active:
            return result
        self.removed = select_tiles(result, self.spec)
        views = views_of_tiles(result.layout, self.removed)
        if views:
            feats = result.features.clone()
            feats[views] = 0
            result.features = feats
        result.extra["removed_tiles"] = self.removed
        return result


@contextlib.contextmanager
def removing_tiles(spec: RemovalSpec) -> Iterator[TileRemoval]:
    """Register a [`TileRemoval`][gswa_plugin.tools.inspect.TileRemoval] plugin for the duration of the block."""
    plugin = TileRemoval(spec)
    name = f"gswa-tile-removal-{id(plugin)}"
    register_plugin(plugin, name=name)
    try:
        yield plugin
    finally:
        unregister_plugin(name=name)


class _SeamReached(BaseException):
    """Stops a forward at the seam once GSWA has weighted the tiles (the language model is not run).

    A ``BaseException``, like ``GeneratorExit``: it is control flow, not a plugin failure, so the
    plugin guard (which names the plugin of any ``Exception`` a hook raises) lets it through."""

    def __init__(self, batch: TileBatch):
        super().__init__("seam reached")
        self.batch = batch


class _StopAtSeam:
    @hookimpl(wrapper=True)
    def gswa_process_tiles(self, batch: TileBatch, handle: Any) -> Any:
        result = yield
        raise _SeamReached(result)


def seam_batch(model: torch.nn.Module, inputs: Mapping[str, Any]) -> TileBatch:
    """The weighted [`TileBatch`][gswa_plugin.layout.TileBatch] of ``inputs``, from a forward stopped at the seam (the
    vision encoder and GSWA run, the language model does not)."""
    handle = get_handle(model)
    name = f"gswa-stop-at-seam-{id(handle)}"
    register_plugin(_StopAtSeam(), name=name)
    try:
        with torch.no_grad():
            model(**inputs)
    except _SeamReached as stop:
        return stop.batch
    finally:
        unregister_plugin(name=name)
        handle.state.clear()
    raise LayoutError("the forward never reached GSWA's seam: do the inputs hold images?")


def _pad_rows(rows: list[torch.Tensor], value: int, left: bool) -> torch.Tensor:
    width = max(r.shape[0] for r in rows)
    out = rows[0].new_full((len(rows), width), value)
    for i, r in enumerate(rows):
        if left:
            out[i, width - r.shape[0] :] = r
        else:
            out[i, : r.shape[0]] = r
    return out


def drop_tiles(
    model: torch.nn.Module, inputs: Mapping[str, Any], removed: Sequence[Sequence[int]], layout: TileLayout
) -> dict[str, Any]:
    """``inputs`` without the views of the ``removed`` tiles: their rows of ``pixel_values`` and
    their blocks of image tokens (with the matching ``attention_mask`` entries). Rows that become
    shorter are padded again on the side the batch was padded on.

    Raises:
        LayoutError: the model's adapter does not lay views out as blocks of image tokens, or the
            inputs do not match ``layout``.
    """
    handle = get_handle(model)
    if handle.adapter.name not in DROP_ADAPTERS:
        raise LayoutError(
            f"mode='drop' needs a host whose views are fixed-size blocks of image tokens ({', '.join(DROP_ADAPTERS)}); "
            f"the '{handle.adapter.name}' adapter's hosts arrange tiles differently: use mode='zero'"
        )
    views = set(views_of_tiles(layout, removed))
    out = dict(inputs)
    if not views:
        return out
    pixel_values = inputs["pixel_values"]
    keep_views = [v for v in range(pixel_values.shape[0]) if v not in views]
    out["pixel_values"] = pixel_values[keep_views]
    ids = inputs["input_ids"]
    image_token = model.config.image_token_id
    mask = ids == image_token
    starts = mask & ~torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
    keep = torch.ones_like(mask)
    image = 0
    view_start = 0
    for b in range(ids.shape[0]):
        for s in torch.nonzero(starts[b]).flatten().tolist():
            run = int(mask[b, s:].int().cumprod(0).sum())
            n_views = layout.views_per_image[image]
            if run % n_views:
                raise LayoutError(f"image {image} has {run} image tokens, not a multiple of its {n_views} views")
            per_view = run // n_views
            for v in range(n_views):
                if view_start + v in views:
                    keep[b, s + v * per_view : s + (v + 1) * per_view] = False
            view_start += n_views
            image += 1
    if image != layout.num_images:
        raise LayoutError(f"input_ids hold {image} images but the layout describes {layout.num_images}")
    attn = inputs.get("attention_mask")
    left = attn is not None and bool((attn[:, 0] == 0).any())
    pad_id = getattr(model.config, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(getattr(model.config, "text_config", None), "pad_token_id", None) or 0
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.dim() == 2 and value.shape == ids.shape:
            fill = pad_id if key == "input_ids" else 0
            out[key] = _pad_rows([value[b][keep[b]] for b in range(ids.shape[0])], fill, left)
    return out


def run_with_removal(
    model: torch.nn.Module,
    inputs: Mapping[str, Any],
    spec: RemovalSpec,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Any, list[list[int]], dict[str, Any]]:
    """Run ``model`` on ``inputs`` with the tiles of ``spec`` removed.

    Args:
        model: a model with GSWA enabled.
        inputs: processor outputs (with ``input_ids`` and ``pixel_values``).
        spec: what to remove.
        generate_kwargs: call ``generate(**inputs, **generate_kwargs)``; ``None`` calls
            ``model(**inputs)`` (under ``torch.no_grad``).

    Returns:
        (model output, removed tile positions per image, the inputs actually used).
    """
    get_handle(model)

    def call(feed: Mapping[str, Any]) -> Any:
        with torch.no_grad():
            if generate_kwargs is not None:
                return model.generate(**feed, **generate_kwargs)
            return model(**feed)

    if spec.mode == "drop" and spec.active:
        batch = seam_batch(model, inputs)
        removed = select_tiles(batch, spec)
        feed = drop_tiles(model, inputs, removed, batch.layout)
        return call(feed), removed, feed
    with removing_tiles(spec) as plugin:
        out = call(inputs)
    return out, plugin.removed, dict(inputs)


# --- measuring a change on a folder of images ----------------------------------------------------
@dataclass
class OutputChange:
    """How the next-token distribution after the prompt moved against a reference run."""

    max_abs_logit_change: float
    kl_divergence: float
    top1_same: bool


def next_token_logits(output: Any) -> torch.Tensor:
    """Logits ``[batch, vocab]`` of the next token after the prompt (float32)."""
    return output.logits[:, -1].detach().float()


def output_change(reference: torch.Tensor, other: torch.Tensor) -> OutputChange:
    """Change of one prompt's next-token logits ``[vocab]`` against the reference."""
    ref_lp, oth_lp = F.log_softmax(reference, -1), F.log_softmax(other, -1)
    kl = float((ref_lp.exp() * (ref_lp - oth_lp)).sum())
    return OutputChange(
        float((other - reference).abs().max()), max(kl, 0.0), bool(reference.argmax() == other.argmax())
    )


@dataclass
class RemovalResult:
    """Tile removal on one image."""

    name: str
    tile_weights: list[float]
    removed: list[int]
    change: OutputChange


def remove_tiles_on_images(
    model: torch.nn.Module,
    processor: Any,
    images: Iterable[tuple[str, Any]],
    spec: RemovalSpec,
    question: str = "describe the image",
    progress: bool = True,
) -> list[RemovalResult]:
    """Tile removal on each image: the reference is the same model (GSWA on) with nothing removed.

    Args:
        images: (name, PIL image) pairs, e.g. from
            [`gswa_plugin.tools.visualize.load_images`][gswa_plugin.tools.visualize.load_images].
    """
    from tqdm.auto import tqdm

    from gswa_plugin.tools.hosts import model_inputs

    handle = get_handle(model)
    images = list(images)
    results = []
    for name, img in tqdm(images, desc=f"removing tiles ({spec.describe()})", unit="image", disable=not progress):
        inputs = model_inputs(model, processor, [img], question)
        with torch.no_grad():
            ref = next_token_logits(model(**inputs))[0]
        weights = handle.last_batch.tile_weights()[0].float().tolist()
        out, removed, _ = run_with_removal(model, inputs, spec)
        results.append(RemovalResult(name, weights, removed[0], output_change(ref, next_token_logits(out)[0])))
    return results


# --- variant ablation on a folder of images -------------------------------------------------------
@dataclass
class AblationRow:
    """One GSWA checkpoint (or the baseline without GSWA) over a set of images."""

    name: str
    variant: str
    stats: dict[str, float]
    mean_kl_vs_baseline: float
    top1_agreement: float
    max_abs_logit_change: float


def ablate_on_images(
    model: torch.nn.Module,
    processor: Any,
    checkpoints: Mapping[str, str | os.PathLike[str]],
    images: Iterable[tuple[str, Any]],
    question: str = "describe the image",
    progress: bool = True,
) -> list[AblationRow]:
    """The same images under each GSWA checkpoint, against the model without GSWA.

    Args:
        model: the host model, with GSWA not enabled (each checkpoint is loaded and removed in turn).
        checkpoints: name (e.g. the variant) -> saved GSWA directory or YAML.
        images: (name, PIL image) pairs.

    Returns:
        A row for the baseline (``"none"``) and one per checkpoint: weight statistics
        ([`gswa_plugin.tools.diagnostics.weight_stats`][gswa_plugin.tools.diagnostics.weight_stats]) and the change of
        the next-token
        distribution against the baseline.
    """
    from tqdm.auto import tqdm

    from gswa_plugin.tools.hosts import enable_gswa, model_inputs

    if is_enabled(model):
        raise ConfigError(["ablation loads each checkpoint itself: pass the model with GSWA not enabled"])
    images = list(images)
    feeds = [model_inputs(model, processor, [img], question) for _, img in images]
    with torch.no_grad():
        base = [next_token_logits(model(**f))[0] for f in feeds]
    rows = [AblationRow("none", "-", {}, 0.0, 1.0, 0.0)]
    steps = tqdm(total=len(checkpoints) * len(feeds), desc="ablation", unit="image", disable=not progress)
    for name, source in checkpoints.items():
        handle = enable_gswa(model, source)
        if handle is None:
            raise ConfigError([f"checkpoint {name!r} is {source!r}: the baseline is always included, give a checkpoint"])
        try:
            tile_w, thumbs, changes = [], [], []
            for feed, ref in zip(feeds, base):
                with torch.no_grad():
                    logits = next_token_logits(model(**feed))[0]
                batch = handle.last_batch
                tile_w.extend(batch.tile_weights())
                thumbs.extend(_thumbnail_weights(batch))
                changes.append(output_change(ref, logits))
                steps.update(1)
            stats = weight_stats(tile_w, thumbs if len(thumbs) == len(tile_w) else None)
            rows.append(
                AblationRow(
                    name,
                    handle.config.variant,
                    stats,
                    sum(c.kl_divergence for c in changes) / len(changes),
                    sum(c.top1_same for c in changes) / len(changes),
                    max(c.max_abs_logit_change for c in changes),
                )
            )
        finally:
            api.disable(model)
    steps.close()
    return rows


def _thumbnail_weights(batch: TileBatch) -> list[float]:
    w = batch.weights.detach().float()
    return [float(w[g]) if g is not None else math.nan for g in batch.layout.global_indices()]


# --- diagnostics over images ------------------------------------------------------------------
@dataclass
class Diagnosis:
    """Failure signatures of a GSWA checkpoint over a set of images.

    Attributes:
        stats: [`gswa_plugin.tools.diagnostics.weight_stats`][gswa_plugin.tools.diagnostics.weight_stats] over all
            images.
        signatures: lines from
            [`gswa_plugin.tools.diagnostics.failure_signatures`][gswa_plugin.tools.diagnostics.failure_signatures]
            (empty: healthy).
        per_image: (name, tile weights, thumbnail weight) per image.
    """

    stats: dict[str, float]
    signatures: list[str]
    per_image: list[tuple[str, list[float], float | None]] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.signatures


def diagnose_images(
    model: torch.nn.Module,
    processor: Any,
    images: Iterable[tuple[str, Any]],
    thresholds: Thresholds | None = None,
    question: str = "describe the image",
    progress: bool = True,
) -> Diagnosis:
    """Run ``model`` (GSWA enabled) on each image and judge the weights with the paper's failure
    signatures (uniform, one-tile dominance, thumbnail dominance).

    Raises:
        LayoutError: no image was cut into at least two tiles (nothing to judge).
    """
    from tqdm.auto import tqdm

    from gswa_plugin.tools.hosts import model_inputs

    handle = get_handle(model)
    images = list(images)
    tile_w: list[torch.Tensor] = []
    thumbs: list[float] = []
    per_image = []
    for name, img in tqdm(images, desc="diagnosing", unit="image", disable=not progress):
        with torch.no_grad():
            model(**model_inputs(model, processor, [img], question))
        batch = handle.last_batch
        w = batch.tile_weights()[0]
        thumb = _thumbnail_weights(batch)[0]
        tile_w.append(w)
        thumbs.append(thumb)
        per_image.append((name, w.float().tolist(), None if math.isnan(thumb) else thumb))
    judged = [(w, t) for w, t in zip(tile_w, thumbs) if w.numel() >= 2 and not math.isnan(t)]
    if not judged:
        raise LayoutError(
            "none of the images was cut into two or more tiles, so there are no tile weights to judge: "
            "use larger images or raise the tile cap (max_tiles)"
        )
    stats = weight_stats([w for w, _ in judged], [t for _, t in judged])
    return Diagnosis(stats, failure_signatures(stats, thresholds), per_image)


# --- over an lmms-eval task ----------------------------------------------------------------------
def run_lmms_eval(
    model_args: Mapping[str, Any],
    tasks: Sequence[str],
    model: str = "gswa_hf",
    limit: int | float | None = None,
    include_path: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """lmms-eval's ``simple_evaluate`` on ``tasks`` with one of the gswa models (``None`` values
    of ``model_args`` are left out); returns lmms-eval's results, samples included.

    Raises:
        ImportError: lmms-eval is not installed (``pip install 'gswa-plugin[eval]'``).
    """
    try:
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager
    except ImportError as exc:
        raise ImportError(
            "running an lmms-eval task needs lmms-eval: `pip install 'gswa-plugin[eval]'` (see docs/evaluation.md)"
        ) from exc
    args = ",".join(f"{k}={v}" for k, v in model_args.items() if v is not None)
    return simple_evaluate(
        model=model,
        model_args=args,
        tasks=list(tasks),
        limit=limit,
        device=device,
        batch_size=1,
        log_samples=True,
        task_manager=TaskManager(include_path=include_path),
    )


def evaluate_task(
    model_args: Mapping[str, Any],
    tasks: Sequence[str],
    model: str = "gswa_hf",
    limit: int | float | None = None,
    include_path: str | None = None,
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of [`run_lmms_eval`][gswa_plugin.tools.inspect.run_lmms_eval] (numeric metrics
    only)."""
    return metric_table(run_lmms_eval(model_args, tasks, model, limit, include_path, device))


def task_answers(results: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{task: [the model's answer to each document, in document order]}`` from lmms-eval results."""
    out = {}
    for task, samples in (results or {}).get("samples", {}).items():
        rows = sorted(samples, key=lambda s: s["doc_id"])
        out[task] = [str(r["filtered_resps"][0] if isinstance(r["filtered_resps"], list) else r["filtered_resps"]) for r in rows]
    return out


def metric_table(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from lmms-eval results (numeric metrics, without stderr)."""
    table: dict[str, dict[str, float]] = {}
    for task, metrics in (results or {}).get("results", {}).items():
        row = {}
        for key, value in metrics.items():
            if "stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            row[key.split(",", 1)[0]] = float(value)
        table[task] = row
    return table


def remove_tiles_on_task(
    pretrained: str,
    gswa: str,
    spec: RemovalSpec,
    tasks: Sequence[str],
    model: str = "gswa_hf",
    limit: int | float | None = None,
    include_path: str | None = None,
    extra_args: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Scores of ``tasks`` without removal and with ``spec``: ``{task: {metric: (baseline, removed)}}``."""
    common = {"pretrained": pretrained, "gswa": gswa, **(extra_args or {})}
    base = evaluate_task(common, tasks, model, limit, include_path)
    removed = evaluate_task({**common, **removal_model_args(spec)}, tasks, model, limit, include_path)
    return {t: {m: (v, removed.get(t, {}).get(m, math.nan)) for m, v in row.items()} for t, row in base.items()}


def removal_model_args(spec: RemovalSpec) -> dict[str, Any]:
    """The lmms-eval ``model_args`` of a removal (read back by the gswa models)."""
    return {
        "remove_k": spec.k,
        "remove_by": spec.by,
        "remove_which": spec.which,
        "remove_threshold": spec.threshold,
        "remove_mode": spec.mode,
    }


def ablate_on_task(
    pretrained: str,
    checkpoints: Mapping[str, str],
    tasks: Sequence[str],
    model: str = "gswa_hf",
    limit: int | float | None = None,
    include_path: str | None = None,
    extra_args: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores of ``tasks`` without GSWA (``"none"``) and under each checkpoint:
    ``{name: {task: {metric: value}}}``."""
    out = {}
    for name, source in itertools.chain([("none", "none")], checkpoints.items()):
        out[name] = evaluate_task(
            {"pretrained": pretrained, "gswa": source, **(extra_args or {})}, tasks, model, limit, include_path
        )
    return out
