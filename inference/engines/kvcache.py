"""Row and column surgery on a batch's `DynamicCache`: merge, trim, crop, copy one row.

The batcher keeps one left-padded cache for every running sequence; these
helpers change its shape between steps. Every cache tensor is
(batch, heads, length, head_dim); a mask is (batch, length).
"""

from __future__ import annotations

from typing import Any

import torch


def merge_caches(old: Any, new: Any, width: int) -> None:
    """Stack `new`'s rows under `old`'s (in place), left-padding both to `width` columns."""
    for layer_old, layer_new in zip(old.layers, new.layers, strict=True):
        layer_old.keys = torch.cat([pad_left(layer_old.keys, width), pad_left(layer_new.keys, width)])
        layer_old.values = torch.cat([pad_left(layer_old.values, width), pad_left(layer_new.values, width)])


def pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the sequence axis (dim 2 of a cache tensor, dim 1 of a mask) on the left."""
    axis = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[axis]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def drop_leading(cache: Any, columns: int) -> None:
    """Cut the first `columns` positions of every layer (padding in every remaining row)."""
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, columns:, :]
        layer.values = layer.values[:, :, columns:, :]


def crop(cache: Any, length: int) -> None:
    """Cut every layer back to `length` positions.

    A forward pass that raised may have appended the new column to some
    layers and not to others; cropping all of them restores the cache as it
    was before the step.
    """
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.shape[2] > length:
            layer.keys = layer.keys[:, :, :length, :]
            layer.values = layer.values[:, :, :length, :]


def copy_row(cache: Any, row: int) -> Any:
    """A new one-row cache holding a copy of row `row` (to retry it alone without touching `cache`)."""
    from transformers import DynamicCache

    rows = [
        (layer.keys[row : row + 1].clone(), layer.values[row : row + 1].clone()) for layer in cache.layers
    ]
    return DynamicCache(ddp_cache_data=rows)
