"""VoxelStructure: the coordinates that fields share, their keys, kernel-map cache and coarse-to-fine links."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .kernels import coords as kc
from .kernels import kmap_builders as km
from .kernels.segment import row_pointers
from .kernels.kernel_map import KernelMap

Shape3 = Tuple[int, int, int]


class VoxelStructure:
    """Key-sorted coords of a field, with a kernel-map cache every field on these coords shares.

    `parent` is the finer structure a strided conv came from, so an inverse conv can go back to it.
    """

    __slots__ = ("coords", "keys", "spatial_shape", "batch_size", "parent", "cache")

    def __init__(self, coords: torch.Tensor, keys: torch.Tensor, spatial_shape: Shape3, batch_size: int,
                 parent: Optional["VoxelStructure"] = None, trusted: bool = False):
        """trusted: made by this package from sorted keys, so the order check (which reads the device) is skipped.
        Rows must be in ascending key order: sample-major, which the per-sample segment sums of both backends
        (segment ids on one, row_ptr on the other) rely on."""
        if keys.dim() != 1 or coords.dim() != 2 or coords.shape != (keys.numel(), 4):
            raise ValueError(f"VoxelStructure needs coords [N, 4] and keys [N], got {tuple(coords.shape)} and "
                             f"{tuple(keys.shape)}")
        if not trusted and keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
            raise ValueError("VoxelStructure keys must be strictly ascending (rows sorted by sample, then z, y, x, "
                             "without duplicates); build it with VoxelStructure.from_keys(sorted keys) or through "
                             "SparseVoxels, which sorts")
        self.coords = coords  # int32 [N, 4]
        self.keys = keys  # int64 [N], ascending
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.batch_size = int(batch_size)
        self.parent = parent
        self.cache: Dict[tuple, object] = {}

    @property
    def num_voxels(self) -> int:
        """Number of sites N."""
        return self.keys.numel()

    @classmethod
    def from_keys(cls, keys: torch.Tensor, spatial_shape: Shape3, batch_size: int,
                  parent: Optional["VoxelStructure"] = None) -> "VoxelStructure":
        """Structure from ascending unique int64 keys."""
        return cls(kc.keys_to_coords(keys, spatial_shape), keys, spatial_shape, batch_size, parent, trusted=True)

    @classmethod
    def full(cls, batch_size: int, spatial_shape: Shape3, device=None) -> "VoxelStructure":
        """Every cell of the grid, in key order (what a dense field without a mask covers)."""
        keys = torch.arange(batch_size * spatial_shape[0] * spatial_shape[1] * spatial_shape[2], device=device)
        return cls.from_keys(keys, spatial_shape, batch_size)

    @classmethod
    def from_mask(cls, mask: torch.Tensor, lineage: tuple = ()) -> "VoxelStructure":
        """Structure of the True cells of a bool mask [B, 1, D, H, W]; lineage gives the parents."""
        b, shape = mask.shape[0], tuple(mask.shape[2:])
        parent = None
        if lineage:
            fine_mask, fine_shape = lineage[-1]
            if fine_mask is None:
                fine_mask = torch.ones(b, 1, *fine_shape, dtype=torch.bool, device=mask.device)
            parent = cls.from_mask(fine_mask, lineage[:-1])
        keys = torch.nonzero(mask.reshape(-1), as_tuple=False).flatten()
        return cls.from_keys(keys, shape, b, parent)

    def mask(self) -> torch.Tensor:
        """bool [B, 1, D, H, W], True at the sites."""
        d, h, w = self.spatial_shape
        flat = torch.zeros(self.batch_size * d * h * w, dtype=torch.bool, device=self.keys.device)
        flat.index_fill_(0, self.keys, True)  # (an index_put of True would move a host scalar)
        return flat.view(self.batch_size, 1, d, h, w)

    def dense_lineage(self) -> tuple:
        """(mask, spatial_shape) of every ancestor, the nearest last (what DenseVoxels carries)."""
        if self.parent is None:
            return ()
        return self.parent.dense_lineage() + ((self.parent.mask(), self.parent.spatial_shape),)

    def to(self, device) -> "VoxelStructure":
        """Copy on another device (parents too); the cache starts empty there."""
        parent = None if self.parent is None else self.parent.to(device)
        return VoxelStructure(self.coords.to(device), self.keys.to(device), self.spatial_shape,
                              self.batch_size, parent, trusted=True)

    def memo(self, key: tuple, build):
        """The value cached under key, built once by build() (what every layer on these sites shares)."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    def host_counts(self) -> Optional[Tuple[int, ...]]:
        """Sites per sample as host ints where they were read anyway (a strided conv's output), else None."""
        return self.cache.get("host_counts")  # type: ignore[return-value]

    def sample_ids(self) -> torch.Tensor:
        """Sample index of each site, int64 [N], ascending (cached)."""
        if "sample_ids" not in self.cache:
            self.cache["sample_ids"] = self.coords[:, 0].long()
        return self.cache["sample_ids"]  # type: ignore[return-value]

    def row_ptr(self) -> torch.Tensor:
        """CSR offsets int64 [B + 1]: sample b owns rows row_ptr[b]:row_ptr[b + 1] (cached, no host sync)."""
        if "row_ptr" not in self.cache:
            self.cache["row_ptr"] = row_pointers(self.sample_ids(), self.batch_size)
        return self.cache["row_ptr"]  # type: ignore[return-value]

    def submanifold_map(self, kernel_size: Shape3, dilation: Shape3) -> KernelMap:
        """Kernel map of a submanifold conv on these sites (cached)."""
        key = ("subm", kernel_size, dilation)
        if key not in self.cache:
            self.cache[key] = km.submanifold_kmap(self.coords, self.spatial_shape, self.batch_size,
                                                   kernel_size, dilation)
        return self.cache[key]  # type: ignore[return-value]

    def downsample(self, kernel_size: Shape3, stride: Shape3, padding: Shape3,
                   dilation: Shape3) -> Tuple[KernelMap, "VoxelStructure"]:
        """Kernel map and output structure of a strided sparse conv (cached; output links back here)."""
        key = ("down", kernel_size, stride, padding, dilation)
        if key not in self.cache:
            kmap, out_keys, out_coords, out_shape, counts = km.strided_kmap_and_keys(
                self.coords, self.spatial_shape, kernel_size, stride, padding, dilation, self.batch_size)
            coarse = VoxelStructure(out_coords, out_keys, out_shape, self.batch_size, parent=self, trusted=True)
            coarse.cache["host_counts"] = counts  # read with the size: attention buckets need no read of their own
            cells = out_shape[0] * out_shape[1] * out_shape[2]
            coarse.cache["sample_ids"] = torch.div(out_keys, cells, rounding_mode="floor")  # as coords[:, 0]
            self.cache[key] = (kmap, coarse)
        return self.cache[key]  # type: ignore[return-value]

    def inverse_map(self, kernel_size: Shape3, stride: Shape3, padding: Shape3,
                    dilation: Shape3) -> Tuple[KernelMap, "VoxelStructure"]:
        """Kernel map (in = these sites, out = parent's sites) of an inverse conv back to the parent."""
        if self.parent is None:
            raise ValueError(kc.NO_FINER_GRID)
        key = ("inv", kernel_size, stride, padding, dilation)
        if key not in self.cache:
            parent = self.parent
            cached = parent.cache.get(("down", kernel_size, stride, padding, dilation))
            if cached is not None and cached[1] is self:
                kmap = cached[0].transposed()  # the strided conv's own pairs, reversed
            else:
                kmap = km.inverse_kmap(parent.coords, parent.spatial_shape, self.keys, self.spatial_shape,
                                       kernel_size, stride, padding, dilation, self.batch_size)
            self.cache[key] = (kmap, parent)
        return self.cache[key]  # type: ignore[return-value]


    def children(self, stride: Shape3, fine_shape: Optional[Shape3] = None) -> Tuple[KernelMap, "VoxelStructure"]:
        """Kernel map (offset j of a stride-sized kernel) and structure of every child c*stride + j (cached)."""
        key = ("children", stride, fine_shape)
        if key not in self.cache:
            kmap, fine_coords, shape = km.children_kmap(self.coords, self.spatial_shape, stride, fine_shape,
                                                        self.batch_size)
            fine = VoxelStructure(fine_coords, kc.linear_keys(fine_coords, shape), shape, self.batch_size,
                                  trusted=True)
            self.cache[key] = (kmap, fine)
        return self.cache[key]  # type: ignore[return-value]
