"""Host-side reads of small integer tensors (``input_ids``), kept to one per forward.

GSWA needs a forward's layout (views per image, which positions hold image tokens) as Python
numbers. Reading it off a device tensor with ``bool(any)``, boolean indexing, ``bincount`` or
``.tolist()`` blocks the host until the device has run everything queued before, once per such
call. Here the ids are copied to the host once, as soon as the forward receives them (on CUDA a
non-blocking copy into pinned memory followed by an event, so the host later waits only for that
copy, not for the vision encoder queued after it), and everything else is computed with numpy on
that copy. Index tensors derived from it go back to the device with one non-blocking copy.

The functions are hidden from ``torch.compile`` (``torch.compiler.disable``): each call is one
graph break, instead of one per data-dependent operation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class HostArray:
    """A host copy of a tensor, started at once and completed on first use (its `numpy()` method)."""

    def __init__(self, tensor: torch.Tensor):
        self.source = tensor
        t = tensor.detach()
        self._event = None
        if t.device.type == "cuda":
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            buf.copy_(t, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
            self._buf = buf
        else:
            self._buf = t.cpu()
        self._array: np.ndarray | None = None

    def numpy(self) -> np.ndarray:
        if self._array is None:
            if self._event is not None:
                self._event.synchronize()
            self._array = self._buf.numpy()
        return self._array


@torch.compiler.disable
def host_array(tensor: Any) -> np.ndarray:
    """``tensor`` as a numpy array on the host (a numpy array or a ``HostArray`` passes through)."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, HostArray):
        return tensor.numpy()
    return HostArray(tensor).numpy()


@torch.compiler.disable
def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device`` (pinned, non-blocking copy on CUDA: no sync)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
