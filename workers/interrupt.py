"""Ending a job's computation mid-pass, so that a stopping worker lets go of its jobs within moments.

A job checks for a cancel between its steps, but one step can hold many passes (a meta_init outer step: K inner
steps for every task of the meta-batch), and one pass of a real model on a CPU can take tens of seconds
(validation, a teacher's soft labels, a backward through K inner steps). `interruptible(check)` calls check() all
through whatever the block computes on this thread, between two torch operations:
- every torch function called from Python (Hugging Face's layers included): forward passes with or without
  gradients, their layer loops, decoding;
- every tensor that autograd saves for backward, and every one a backward pass reads back (the hooks travel with
  the saved tensors): backward passes, including one through K inner steps.
Whatever check() raises ends the block there. Both mechanisms are state of the calling thread (a torch function
mode and saved-tensor hooks are thread-local), so nothing is set on the shared model (STYLE rule 2) and the
inference engine's thread, serving beside an embedded worker, never runs a check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode


class _CheckEveryCall(TorchFunctionMode):
    """Calls check() before each torch function this thread calls (the mode is off while the function runs, so
    a Python-level torch function's own calls are not checked again)."""

    def __init__(self, check: Callable[[], None]) -> None:
        super().__init__()
        self.check = check

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        self.check()
        return func(*args, **(kwargs or {}))


@contextmanager
def interruptible(check: Callable[[], None]) -> Iterator[None]:
    """Run the block with check() called before every torch operation and around every saved tensor of its
    passes; check() raises to end the block. It must be cheap: it runs thousands of times per pass."""

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        check()
        # Detached: the saved tensor holding itself (an output saved by the node that made it) would be a
        # reference cycle autograd cannot free. It shares the tensor's storage and version counter, so in-place
        # changes are still caught; autograd re-attaches the graph on unpacking (gradients are bit-identical).
        return tensor.detach()

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        check()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), _CheckEveryCall(check):
        yield
