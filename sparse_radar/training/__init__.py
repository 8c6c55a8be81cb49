"""Training: config and flags, checkpoints, previews, distributed helpers, the trainer."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, build_parser, parse_args
from .trainer import Trainer, TrainingStopped

__all__ = ["TrainConfig", "build_parser", "parse_args", "Trainer", "TrainingStopped", "save_checkpoint",
           "load_checkpoint"]
