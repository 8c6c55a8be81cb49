"""The two field types, SparseVoxels and DenseVoxels, their conversions and the kernel-map cache."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .kernels import coords as kc
from .kernels import kmap_builders as km
from .structure import VoxelStructure

Shape3 = Tuple[int, int, int]


def _spatial_shape(value) -> Shape3:
    try:
        items = list(value)
        shape = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise TypeError(f"spatial_shape must be three ints (D, H, W), got {value!r}") from None
    if any(isinstance(v, (bool, str, bytes)) or v != s for v, s in zip(items, shape)):
        raise ValueError(f"spatial_shape must be three whole numbers (D, H, W), got {value!r}")
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise ValueError(f"spatial_shape must be three positive ints (D, H, W), got {value!r}")
    if max(shape) > kc.INT32_LIMIT:
        raise ValueError(f"spatial_shape {shape}: coords are int32, so each size must be at most 2^31")
    return shape  # type: ignore[return-value]


def _tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return value


def _non_finite(name: str) -> ValueError:
    return ValueError(f"{name} contain non-finite values (nan or inf)")


def _check_finite(values: torch.Tensor, name: str) -> None:
    if values.numel() and not bool(torch.isfinite(values).all()):
        raise _non_finite(name)


class SparseVoxels:
    """Active voxels of a batch of 3D grids: feats [N, C] at coords [N, 4] (batch, z, y, x), key-sorted."""

    __slots__ = ("_feats", "_structure")

    def __init__(self, feats, coords, spatial_shape: Sequence[int], batch_size: int):
        feats = _tensor(feats, "feats")
        coords = _tensor(coords, "coords")
        if not feats.is_floating_point() or feats.dim() != 2:
            raise ValueError(f"feats must be a floating tensor [N, C], got {feats.dtype} {tuple(feats.shape)}")
        if coords.is_floating_point() or coords.is_complex() or coords.dtype == torch.bool or coords.dim() != 2 \
                or coords.shape[1] != 4:
            raise ValueError(
                f"coords must be an integer tensor [N, 4] (batch, z, y, x), got {coords.dtype} {tuple(coords.shape)}")
        if coords.shape[0] != feats.shape[0]:
            raise ValueError(f"feats has {feats.shape[0]} rows but coords has {coords.shape[0]}: one row per voxel")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
                not 1 <= batch_size <= kc.INT32_LIMIT:
            raise ValueError(f"batch_size must be a positive int (at most 2^31), got {batch_size!r}")
        shape = _spatial_shape(spatial_shape)
        kc.check_key_range(shape, int(batch_size))
        coords = coords.to(device=feats.device, dtype=torch.int64)
        limits = kc.constant([int(batch_size), *shape], coords.device)
        outside = ((coords < 0) | (coords >= limits)).any(dim=1)
        keys, order = kc.sort_by_key(kc.linear_keys(coords, shape))  # used only when no row lies outside
        repeated = keys[1:] == keys[:-1]
        # the three checks in one host read (a device's queue waits once, not three times)
        any_outside, non_finite, any_repeated = torch.stack(
            [outside.any(), ~torch.isfinite(feats).all(), repeated.any()]).tolist()
        if any_outside:
            row = int(outside.nonzero()[0])
            raise ValueError(
                f"coordinate {coords[row].tolist()} (row {row}) lies outside batch [0, {batch_size}) "
                f"x spatial_shape {shape}")
        if non_finite:
            raise _non_finite("feats")
        if any_repeated:
            dup = int(repeated.nonzero()[0])
            raise ValueError(f"duplicate coordinate {kc.keys_to_coords(keys[dup:dup + 1], shape)[0].tolist()}")
        self._feats = feats[order]
        self._structure = VoxelStructure(coords[order].to(torch.int32), keys, shape, int(batch_size), trusted=True)

    @classmethod
    def wrap(cls, feats: torch.Tensor, structure: VoxelStructure) -> "SparseVoxels":
        """Field on an existing (already validated) structure; used by layers, skips validation."""
        obj = cls.__new__(cls)
        obj._feats = feats
        obj._structure = structure
        return obj

    feats = property(lambda self: self._feats, doc="Features [N, C].")
    structure = property(lambda self: self._structure, doc="Shared coordinates, keys and kernel-map cache.")
    coords = property(lambda self: self._structure.coords, doc="int32 [N, 4] (batch, z, y, x), key-sorted.")
    spatial_shape = property(lambda self: self._structure.spatial_shape, doc="(D, H, W).")
    batch_size = property(lambda self: self._structure.batch_size, doc="Number of samples B.")
    num_voxels = property(lambda self: self._feats.shape[0], doc="Number of active voxels N.")
    num_channels = property(lambda self: self._feats.shape[1], doc="Channels C.")
    device = property(lambda self: self._feats.device, doc="Device of feats and coords.")
    dtype = property(lambda self: self._feats.dtype, doc="dtype of feats.")

    def __repr__(self) -> str:
        return (f"SparseVoxels(N={self.num_voxels}, C={self.num_channels}, spatial_shape={self.spatial_shape}, "
                f"batch_size={self.batch_size}, dtype={self.dtype}, device={self.device})")

    def replace(self, feats: torch.Tensor) -> "SparseVoxels":
        """Same voxels (and kernel-map cache), new features [N, C']."""
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != self.num_voxels:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(f"replace needs feats of shape [{self.num_voxels}, C], got {shape}")
        return SparseVoxels.wrap(feats, self._structure)

    def values_at(self, keys: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Features [Q, C] at the voxels of linear keys [Q] (same grid and batch), fill where there is none."""
        rows = kc.lookup(self._structure.keys, keys)
        if self.num_voxels == 0:
            return self._feats.new_full((keys.numel(), self.num_channels), fill)
        got = self._feats.index_select(0, rows.clamp_min(0))  # a gather and a select: no boolean mask, no sync
        return torch.where((rows >= 0)[:, None], got, torch.full_like(got[:1], fill))

    def to(self, *args, **kwargs) -> "SparseVoxels":
        """Move/cast like Tensor.to; coordinates follow the device, kernel maps are rebuilt there."""
        feats = self._feats.to(*args, **kwargs)
        if feats.device == self._feats.device:
            return SparseVoxels.wrap(feats, self._structure)
        return SparseVoxels.wrap(feats, self._structure.to(feats.device))

    def batch_counts(self) -> torch.Tensor:
        """Active voxels per sample, [B] int64 (from the structure's row offsets: no host sync)."""
        row_ptr = self._structure.row_ptr()
        return row_ptr[1:] - row_ptr[:-1]

    def to_dense(self) -> "DenseVoxels":
        """DenseVoxels [B, C, D, H, W] with the active voxels as mask (zeros elsewhere); differentiable."""
        s = self._structure
        b, (d, h, w), c = s.batch_size, s.spatial_shape, self.num_channels
        flat = self._feats.new_zeros(b * d * h * w, c)
        flat = flat.index_copy(0, s.keys, self._feats)  # [B*D*H*W, C]
        data = flat.view(b, d, h, w, c).permute(0, 4, 1, 2, 3).contiguous()
        return DenseVoxels.wrap(data, s.mask(), s.dense_lineage())

    def to_sparse(self) -> "SparseVoxels":
        """Itself."""
        return self

    def prune(self, keep: torch.Tensor) -> "SparseVoxels":
        """Keep the voxels where keep [N] bool is True (a new coordinate set, with its own cache)."""
        coords, rows = km.prune(self.coords, keep)
        s = self._structure
        structure = VoxelStructure(coords, s.keys[rows], s.spatial_shape, s.batch_size, trusted=True)
        return SparseVoxels.wrap(self._feats[rows], structure)

    @classmethod
    def from_dense(cls, tensor, mask=None) -> "SparseVoxels":
        """From a dense [B, C, D, H, W] tensor (or DenseVoxels); mask None = voxels with any nonzero channel."""
        if isinstance(tensor, DenseVoxels):
            if mask is None:
                return tensor.to_sparse()
            tensor = tensor.data
        data = _tensor(tensor, "tensor")
        if data.dim() != 5 or not data.is_floating_point():
            raise ValueError(f"tensor must be a floating [B, C, D, H, W] tensor, got {data.dtype} {tuple(data.shape)}")
        if mask is None:
            mask = (data != 0).any(dim=1, keepdim=True)
        return DenseVoxels(data, mask).to_sparse()


class DenseVoxels:
    """A dense batch data [B, C, D, H, W] with an optional active mask [B, 1, D, H, W] (None = all active)."""

    __slots__ = ("_data", "_mask", "_lineage")

    def __init__(self, data, mask=None):
        data = _tensor(data, "data")
        if data.dim() != 5 or not data.is_floating_point():
            raise ValueError(f"data must be a floating tensor [B, C, D, H, W], got {data.dtype} {tuple(data.shape)}")
        if mask is not None:
            mask = _tensor(mask, "mask")
            expected = (data.shape[0], 1, *data.shape[2:])
            if mask.dtype != torch.bool or tuple(mask.shape) != expected:
                raise ValueError(f"mask must be a bool tensor of shape {expected}, got {mask.dtype} {tuple(mask.shape)}")
            mask = mask.to(data.device)
        if data.shape[0] < 1 or min(data.shape[2:]) < 1:
            raise ValueError(f"data must hold at least one sample and one voxel, got shape {tuple(data.shape)}")
        kc.check_key_range(data.shape[2:], data.shape[0])
        _check_finite(data, "data")
        self._data, self._mask, self._lineage = data, mask, ()

    @classmethod
    def wrap(cls, data: torch.Tensor, mask: Optional[torch.Tensor], lineage: tuple = ()) -> "DenseVoxels":
        """Field from already validated tensors; lineage = finer (mask, spatial_shape) levels, nearest last."""
        obj = cls.__new__(cls)
        obj._data, obj._mask, obj._lineage = data, mask, lineage
        return obj

    data = property(lambda self: self._data, doc="Data [B, C, D, H, W].")
    mask = property(lambda self: self._mask, doc="bool [B, 1, D, H, W] or None (every voxel active).")
    lineage = property(lambda self: self._lineage, doc="(mask, spatial_shape) of the grids strided convs came from.")
    spatial_shape = property(lambda self: tuple(self._data.shape[2:]), doc="(D, H, W).")
    batch_size = property(lambda self: self._data.shape[0], doc="Number of samples B.")
    num_channels = property(lambda self: self._data.shape[1], doc="Channels C.")
    device = property(lambda self: self._data.device, doc="Device of data.")
    dtype = property(lambda self: self._data.dtype, doc="dtype of data.")

    def __repr__(self) -> str:
        m = "None" if self._mask is None else f"{int(self._mask.sum())} active"
        return f"DenseVoxels(data={tuple(self._data.shape)}, mask={m}, dtype={self.dtype}, device={self.device})"

    def replace(self, data: torch.Tensor) -> "DenseVoxels":
        """Same mask and lineage, new data [B, C', D, H, W]."""
        ok = isinstance(data, torch.Tensor) and data.dim() == 5 and data.shape[0] == self.batch_size \
            and tuple(data.shape[2:]) == self.spatial_shape
        if not ok:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(f"replace needs data of shape [{self.batch_size}, C, *{self.spatial_shape}], got {shape}")
        return DenseVoxels.wrap(data, self._mask, self._lineage)

    def to(self, *args, **kwargs) -> "DenseVoxels":
        """Move/cast like Tensor.to (the mask follows the device)."""
        data = self._data.to(*args, **kwargs)
        move = (lambda m: None if m is None else m.to(data.device))
        lineage = tuple((move(m), shape) for m, shape in self._lineage)
        return DenseVoxels.wrap(data, move(self._mask), lineage)

    def active(self) -> torch.Tensor:
        """The mask, or an all-True mask when there is none."""
        if self._mask is not None:
            return self._mask
        return torch.ones(self.batch_size, 1, *self.spatial_shape, dtype=torch.bool, device=self.device)

    def masked_data(self) -> torch.Tensor:
        """data with inactive voxels set to zero."""
        return self._data if self._mask is None else self._data * self._mask.to(self._data.dtype)

    def to_dense(self) -> "DenseVoxels":
        """Itself."""
        return self

    def to_sparse(self) -> SparseVoxels:
        """SparseVoxels of the active voxels (all voxels when mask is None), with the same lineage."""
        b, c = self._data.shape[:2]
        structure = VoxelStructure.from_mask(self.active(), self._lineage)
        feats = self._data.permute(0, 2, 3, 4, 1).reshape(-1, c).index_select(0, structure.keys)  # [N, C]
        return SparseVoxels.wrap(feats, structure)
