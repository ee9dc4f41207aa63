"""A ``TrainerCallback`` that watches GSWA's weights and gradients while training.

Every optimizer step it computes
[`gswa_plugin.tools.diagnostics.weight_stats`][gswa_plugin.tools.diagnostics.weight_stats] on the latest
forward's tile weights, plus the GSWA gradient norm just before the optimizer steps, and keeps
them as ``gswa/<statistic>`` in ``GSWADiagnosticsCallback.latest``. ``GSWATrainer``
merges them into every log line, so every logger (console, TensorBoard, W&B, ...) and
``trainer.state.log_history`` get them. With a stock ``Trainer``, use
[`add_diagnostics`][gswa_plugin.integrations.transformers.callback.add_diagnostics],
which puts the callback first so that the loggers see the statistics it adds in ``on_log``.

It warns (Python ``logging``, logger ``gswa_plugin.integrations.transformers``) on the paper's failure signatures:
weights stuck at uniform (only after ``uniform_after_steps``, since GSWA starts uniform by
design), one tile or the thumbnail dominating, and vanishing GSWA gradients. Each signature is
repeated at most every ``warn_every_steps`` steps; every warning is also kept in
``GSWADiagnosticsCallback.warnings`` as ``(step, line)``.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from gswa_plugin.handle import get_handle, is_enabled
from gswa_plugin.integrations import unwrap
from gswa_plugin.tools.diagnostics import Thresholds, failure_signatures, grad_norm, weight_stats

logger = logging.getLogger("gswa_plugin.integrations.transformers")

#: Prefix of the logged statistics.
LOG_PREFIX = "gswa/"


class GSWADiagnosticsCallback(TrainerCallback):
    """Log per-step GSWA weight statistics and warn on failure signatures.

    Args:
        thresholds: where statistics become warnings.
        uniform_after_steps: steps before ``uniform`` weights are reported.
        warn_every_steps: smallest gap, in steps, between two warnings of the same signature.
    """

    def __init__(
        self, thresholds: Thresholds | None = None, uniform_after_steps: int = 100, warn_every_steps: int = 50
    ):
        self.thresholds = thresholds or Thresholds()
        self.uniform_after_steps = uniform_after_steps
        self.warn_every_steps = warn_every_steps
        self.latest: dict[str, float] = {}
        self.warnings: list[tuple[int, str]] = []
        self._grad: float | None = None
        self._last_warned: dict[str, int] = {}

    @staticmethod
    def _handle(model: Any) -> Any:
        base = unwrap(model) if model is not None else None
        return get_handle(base) if base is not None and is_enabled(base) else None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        handle = self._handle(model)
        if handle is not None:
            self._grad = grad_norm(handle.module.parameters())

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        handle = self._handle(model)
        if handle is None or handle.last_batch is None:
            return
        batch = handle.last_batch
        thumbs = None
        if batch.weights is not None:
            idx = [i for i in batch.layout.global_indices() if i is not None]
            thumbs = [float(batch.weights[i].detach()) for i in idx] if len(idx) == batch.layout.num_images else None
        stats = weight_stats(batch.tile_weights(), thumbs)
        if self._grad is not None:
            stats["grad_norm"] = self._grad
        self.latest = {LOG_PREFIX + k: float(v) for k, v in stats.items()}
        for line in failure_signatures(stats, self.thresholds):
            name = line.split(":", 1)[0]
            if name == "uniform" and state.global_step < self.uniform_after_steps:
                continue
            last = self._last_warned.get(name)
            if last is not None and state.global_step - last < self.warn_every_steps:
                continue
            self._last_warned[name] = state.global_step
            self.warnings.append((state.global_step, line))
            logger.warning("GSWA step %d: %s", state.global_step, line)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs is not None:
            for k, v in self.latest.items():
                logs.setdefault(k, v)


def add_diagnostics(trainer: Any, callback: GSWADiagnosticsCallback | None = None) -> GSWADiagnosticsCallback:
    """Attach a [`GSWADiagnosticsCallback`][gswa_plugin.integrations.transformers.callback.GSWADiagnosticsCallback] to
    any ``Trainer``, ahead of its loggers."""
    cb = callback or GSWADiagnosticsCallback()
    trainer.callback_handler.callbacks.insert(0, cb)
    return cb
