"""UNetConfig (the reference's field and flag names), validation, per-level strides and named presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import List, Tuple

from ..nn.attention import ATTENTION_TYPES
from ..nn.norm import NORM_TYPES

DOWNSAMPLE_TYPES = ("asymmetric", "standard")
DOWNSAMPLE_STRIDES = ("xy_only", "z_half", "full", "adaptive")


def _fail(name: str, message: str) -> None:
    raise ValueError(f"UNetConfig.{name}: {message}")


def _positive_ints(value, name: str, length=None) -> Tuple[int, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        _fail(name, f"expected a sequence of positive ints, got {value!r}")
    if any(v < 1 for v in out) or (length is not None and len(out) != length) or not out:
        _fail(name, f"expected {length or 'one or more'} positive ints, got {value!r}")
    return out


@dataclass
class UNetConfig:
    """Hyper-parameters of UNet3D. attention_resolutions are downsample factors ds (1, 2, 4, ...)."""

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 64
    channel_mult: Tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_type: str = "flash"
    attention_resolutions: Tuple[int, ...] = (8, 4)
    num_heads: int = 4
    window_size: Tuple[int, int, int] = (4, 4, 4)
    topk: int = 32
    patch_size: int = 64
    downsample_type: str = "asymmetric"
    downsample_stride: str = "xy_only"
    min_z_size: int = 4
    norm_type: str = "group"
    num_groups: int = 32
    dropout: float = 0.1
    use_checkpoint: bool = False
    use_fp16: bool = False
    use_depthwise: bool = False
    input_size: Tuple[int, int, int] = (32, 128, 128)

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "num_heads", "topk",
                     "patch_size", "min_z_size", "num_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, f"expected a positive int, got {value!r}")
        self.channel_mult = _positive_ints(self.channel_mult, "channel_mult")
        self.attention_resolutions = tuple(_positive_ints(self.attention_resolutions, "attention_resolutions")) \
            if self.attention_resolutions not in ((), [], "") else ()
        self.window_size = _positive_ints(self.window_size, "window_size", 3)
        self.input_size = _positive_ints(self.input_size, "input_size", 3)
        for name, allowed in (("attention_type", ATTENTION_TYPES), ("norm_type", NORM_TYPES),
                              ("downsample_type", DOWNSAMPLE_TYPES), ("downsample_stride", DOWNSAMPLE_STRIDES)):
            if getattr(self, name) not in allowed:
                _fail(name, f"unknown option {getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            _fail("dropout", f"expected a float in [0, 1), got {self.dropout!r}")
        for ds in self.attention_resolutions:
            if ds & (ds - 1):
                _fail("attention_resolutions", f"entries are downsample factors (1, 2, 4, 8, ...), got {ds}")
        if self.attention_type != "none":
            for ch in self.attention_channels():
                if ch % self.num_heads:
                    _fail("num_heads", f"{ch} channels at an attention level are not divisible by {self.num_heads} heads")
        self.check_grid(self.input_size, "input_size")

    def level_channels(self) -> List[int]:
        """Channels of each encoder level."""
        return [self.model_channels * m for m in self.channel_mult]

    def attention_channels(self) -> List[int]:
        """Channels of every level that has attention, and of the middle block."""
        chans = [c for i, c in enumerate(self.level_channels()) if 2**i in self.attention_resolutions]
        return chans + [self.level_channels()[-1]]

    def level_strides(self) -> List[Tuple[int, int, int]]:
        """Stride of each of the len(channel_mult) - 1 downsamplings (REFERENCE.md semantics)."""
        strides, z = [], self.input_size[0]
        for level in range(len(self.channel_mult) - 1):
            if self.downsample_type == "standard" or self.downsample_stride == "full":
                s = (2, 2, 2)
            elif self.downsample_stride == "xy_only":
                s = (1, 2, 2)
            elif self.downsample_stride == "z_half":  # conservative: Z at every other level
                s = (2, 2, 2) if level % 2 == 0 else (1, 2, 2)
            else:  # adaptive: Z while it is larger than min_z_size
                s = (2, 2, 2) if z > self.min_z_size else (1, 2, 2)
            z //= s[0]
            strides.append(s)
        return strides

    def check_grid(self, spatial_shape, name: str = "grid") -> None:
        """Raise ValueError unless every level's grid divides by its stride."""
        shape = tuple(int(s) for s in spatial_shape)
        current = shape
        for level, stride in enumerate(self.level_strides()):
            if any(n % s or n // s < 1 for n, s in zip(current, stride)):
                raise ValueError(
                    f"UNetConfig.{name}: grid {shape} is too small or not divisible for {len(self.channel_mult)} "
                    f"levels (channel_mult) with downsample_stride={self.downsample_stride!r}: level {level} has "
                    f"grid {current} and stride {stride}")
            current = tuple(n // s for n, s in zip(current, stride))

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "UNetConfig":
        """Config from a dict; unknown keys raise ValueError."""
        return dataclass_from_dict(cls, values, "UNetConfig: unknown field(s)")


def dataclass_from_dict(cls, values: dict, complaint: str):
    """cls(**values), with a ValueError '<complaint> a, b' naming keys that are not fields of cls."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{complaint} {', '.join(unknown)}")
    return cls(**values)


def _preset(base: dict, overrides: dict) -> UNetConfig:
    return UNetConfig.from_dict({**base, **overrides})


def create_lightweight_unet_config(**overrides) -> UNetConfig:
    """24 GB preset of the reference: 64 ch, (1,2,2,4), flash attention at ds 8 and 4, fp16 + checkpointing."""
    return _preset(dict(model_channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2, attention_type="flash",
                        attention_resolutions=(8, 4), num_heads=4, norm_type="group", downsample_type="asymmetric",
                        downsample_stride="xy_only", dropout=0.1, use_fp16=True, use_checkpoint=True), overrides)


def create_ultra_lightweight_unet_config(**overrides) -> UNetConfig:
    """12 GB preset: 48 ch, (1,2,2,2), one res block, linear attention at ds 4, instance norm, depthwise convs."""
    return _preset(dict(model_channels=48, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_type="linear",
                        attention_resolutions=(4,), num_heads=2, norm_type="instance", downsample_type="asymmetric",
                        downsample_stride="xy_only", dropout=0.05, use_depthwise=True), overrides)


def create_balanced_unet_config(**overrides) -> UNetConfig:
    """Balanced preset: 64 ch, (1,2,3,4), window attention (4x4x4) at ds 16, 8, 4, adaptive downsampling."""
    return _preset(dict(model_channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=2, attention_type="window",
                        attention_resolutions=(16, 8, 4), window_size=(4, 4, 4), num_heads=4, norm_type="group",
                        downsample_type="asymmetric", downsample_stride="adaptive", dropout=0.1), overrides)


def create_tiny_unet_config(**overrides) -> UNetConfig:
    """CPU-test preset: 16 ch, (1, 2), one res block, flash attention at ds 2, small grid."""
    return _preset(dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_type="flash",
                        attention_resolutions=(2,), num_heads=2, num_groups=8, dropout=0.0,
                        input_size=(8, 16, 16)), overrides)


PRESETS = {
    "lightweight": create_lightweight_unet_config,
    "ultra_lightweight": create_ultra_lightweight_unet_config,
    "balanced": create_balanced_unet_config,
    "tiny": create_tiny_unet_config,
}
