"""Network calls on batches of one fixed size, so that an item's result does not depend on its batch.

A convolution, a matrix product or an attention kernel may take another path (blocking,
algorithm, reduction order) for another batch size, and the last float bits of every item
change with it; a guided reverse process of tens of steps grows those bits into grey levels
(measured before this module: 1,999 of 20,480 counterfactual pixels differed between batch 1
and batch 4). At one batch shape the kernels are the same and each item's computation does not
read the other items (eval-mode batch norm, group norm and attention are per item), so an item
gets the same bits wherever it sits in the batch and whoever its neighbours are
(``tests/test_fixed_batch.py`` checks this on the CPU for the project's networks).

:func:`call_fixed` runs ``fn`` on chunks of exactly ``width`` items: a call with n items runs
ceil(n / width) times, the last chunk padded with copies of its last item (valid inputs for any
network: a real time step, plane, layout), and the padding's outputs are dropped. The copies
are detached, so a gradient taken through the call reaches only the real items; with a loss
that is a sum over items, each item's gradient is its own. The counterfactual engine and the
synthesis sampler call every network through it (``cf.net_batch``, ``synthesis.net_batch``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _pad(a: Any, n: int, start: int, width: int) -> Any:
    """Items ``start:start + width`` of a batched argument, padded to ``width`` with its last item."""
    if not isinstance(a, torch.Tensor):
        return a
    if a.dim() == 0 or a.shape[0] != n:
        raise ValueError(f"call_fixed: every tensor argument must have the batch ({n}) as its first dimension, got {tuple(a.shape)}")
    part = a[start:start + width]
    short = width - part.shape[0]
    if short == 0:
        return part
    fill = part[-1:].detach().expand(short, *part.shape[1:])
    return torch.cat([part, fill])


def _take(out: Any, k: int) -> Any:
    """The first ``k`` items of a network's output (a tensor, or a list / tuple / dict of them)."""
    if isinstance(out, torch.Tensor):
        return out[:k]
    if isinstance(out, list | tuple):
        return type(out)(_take(o, k) for o in out)
    if isinstance(out, dict):
        return {key: _take(v, k) for key, v in out.items()}
    return out


def _join(parts: list) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, list | tuple):
        return type(first)(_join([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: _join([p[key] for p in parts]) for key in first}
    return first


def call_fixed(fn: Callable[..., Any], width: int, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` computed on chunks of exactly ``width`` items (module docstring).

    Every tensor argument is batched (first dimension = the batch, taken from the first
    argument); other arguments are passed as they are. The output keeps its structure."""
    width = int(width)
    if width < 1:
        raise ValueError(f"call_fixed: width {width} must be at least 1")
    n = int(args[0].shape[0])
    if n == 0:
        raise ValueError("call_fixed: an empty batch")
    parts = []
    for start in range(0, n, width):
        k = min(width, n - start)
        out = fn(*[_pad(a, n, start, width) for a in args], **{key: _pad(v, n, start, width) for key, v in kwargs.items()})
        parts.append(_take(out, k))
    return parts[0] if len(parts) == 1 else _join(parts)


class FixedBatch(nn.Module):
    """``net`` called through :func:`call_fixed` at ``width`` items; other attributes are the net's."""

    def __init__(self, net: nn.Module | Callable[..., Any], width: int):
        super().__init__()
        if int(width) < 1:
            raise ValueError(f"FixedBatch: width {width} must be at least 1")
        self.net = net
        self.width = int(width)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return call_fixed(self.net, self.width, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)


def fixed(fn: Callable[..., Any], width: int | None) -> Callable[..., Any]:
    """``fn`` (a network or a method such as ``guide.segment``) called at ``width`` items; ``fn``
    itself when ``width`` is None."""
    if width is None:
        return fn
    return lambda *args, **kwargs: call_fixed(fn, width, *args, **kwargs)
