"""Models: UNet3D with its config and presets."""
from .config import (PRESETS, UNetConfig, create_balanced_unet_config, create_lightweight_unet_config,
                     create_tiny_unet_config, create_ultra_lightweight_unet_config)
from .unet import UNet3D

__all__ = ["UNet3D", "UNetConfig", "PRESETS", "create_lightweight_unet_config",
           "create_ultra_lightweight_unet_config", "create_balanced_unet_config", "create_tiny_unet_config"]
