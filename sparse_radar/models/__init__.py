"""Models: UNet3D with its config and presets; the structure network and the latent-diffusion autoencoders."""
from .config import (PRESETS, UNetConfig, create_balanced_unet_config, create_lightweight_unet_config,
                     create_tiny_unet_config, create_ultra_lightweight_unet_config)
from .structure_net import StructureConfig, StructureNet
from .unet import UNet3D
from .vae import VAE3D, VQVAE3D, VAEConfig, create_lightweight_vae_config, create_standard_vae_config

__all__ = ["UNet3D", "UNetConfig", "PRESETS", "create_lightweight_unet_config",
           "create_ultra_lightweight_unet_config", "create_balanced_unet_config", "create_tiny_unet_config",
           "StructureNet", "StructureConfig", "VAE3D", "VQVAE3D", "VAEConfig", "create_lightweight_vae_config",
           "create_standard_vae_config"]
