"""Data: grid spec, voxelizer, built-in synthetic scenes, file formats, datasets, diffusion support."""
from .datasets import (DATA_FORMATS, PointPairDataset, ReferenceVoxelDataset, SyntheticDataset, collate,
                       open_dataset, voxel_pair)
from .grid import NTU4DRADLM_GRID, GridSpec
from .support import SUPPORT_TYPES, coverage, on_support, support_structure, training_fields
from .synthetic import SensorConfig, generate_scan, split_seed
from .voxelize import EMPTY, RADAR_CHANNELS, TARGET_CHANNELS, Channel, voxelize

__all__ = ["GridSpec", "NTU4DRADLM_GRID", "Channel", "RADAR_CHANNELS", "TARGET_CHANNELS", "EMPTY", "voxelize",
           "SensorConfig", "generate_scan", "split_seed", "SyntheticDataset", "ReferenceVoxelDataset",
           "PointPairDataset", "open_dataset", "collate", "voxel_pair", "DATA_FORMATS", "SUPPORT_TYPES",
           "support_structure", "on_support", "coverage", "training_fields"]
