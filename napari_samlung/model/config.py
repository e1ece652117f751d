"""SamLungConfig: every number that defines a SAM-Lung model, with the ``vit_b`` and ``tiny`` presets.

The config travels inside each checkpoint (as ``to_dict()``), so it holds only plain JSON-able
values: ints, floats, strings, tuples of them (lists in the dict form) and ``None``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

#: H&E statistics of the research code, on a 0..1 intensity scale.
HE_PIXEL_MEAN = (0.709, 0.381, 0.224)
HE_PIXEL_STD = (0.127, 0.079, 0.043)

#: What fine-tuning trains: the Mona adapters and the head (the paper's method), the whole network,
#: or the head alone.
TUNE_MODES = ("mona", "full", "head")
#: Where the encoder's weights come from: a random initialization, the official SAM file as it is,
#: or training of the whole network (``tune="full"``), after which only a checkpoint holds them.
ENCODER_WEIGHTS = ("random", "sam", "trained")


@dataclass(frozen=True)
class SamLungConfig:
    """Architecture, normalization and training resolution of a SAM-Lung model.

    The defaults are the ``vit_b`` preset (the SAM ViT-B encoder of ``sam_vit_b_01ec64.pth``).
    """

    preset: str = "vit_b"
    num_classes: int = 1  # foreground classes; the model predicts num_classes + 1 (with background)
    img_size: int = 1024  # training tile size; the absolute position embedding is for this size
    # image encoder (SAM ViT)
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    out_chans: int = 256
    # Mona adapters
    adapter_dim: int = 64
    adapter_dropout: float = 0.1
    # PSP head with CBAM
    head_bins: tuple[int, ...] = (1, 2, 3, 6)
    head_channels: int = 64  # channels of each pyramid branch and of the bottleneck
    head_dropout: float = 0.1
    cbam_reduction: int = 16
    cbam_kernel: int = 5
    # input normalization (0..1 scale) and the resolution the model was trained at
    pixel_mean: tuple[float, ...] = HE_PIXEL_MEAN
    pixel_std: tuple[float, ...] = HE_PIXEL_STD
    mpp: float | None = 0.5
    # how the weights came about (they decide what a checkpoint must carry and the default --tune)
    tune: str | None = None  # the strategy of the last fine-tuning (None: never fine-tuned)
    encoder_weights: str = "random"

    def __post_init__(self) -> None:
        positive = ("num_classes", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
                    "out_chans", "adapter_dim", "head_channels", "cbam_reduction", "cbam_kernel")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"SamLungConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.img_size % self.patch_size:
            raise ValueError(f"SamLungConfig.img_size ({self.img_size}) must be a multiple of "
                             f"patch_size ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"SamLungConfig.embed_dim ({self.embed_dim}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if self.mlp_ratio <= 0:
            raise ValueError(f"SamLungConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.window_size < 0:
            raise ValueError(f"SamLungConfig.window_size must be >= 0 (0: all global), "
                             f"got {self.window_size}")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"SamLungConfig.global_attn_indexes {bad} outside 0..{self.depth - 1} (depth)")
        if not self.head_bins or min(self.head_bins) < 1:
            raise ValueError(f"SamLungConfig.head_bins must be positive sizes, got {self.head_bins}")
        if self.cbam_kernel % 2 == 0:
            raise ValueError(f"SamLungConfig.cbam_kernel must be odd, got {self.cbam_kernel}")
        for name in ("adapter_dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"SamLungConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("SamLungConfig.pixel_mean and pixel_std need 3 values (R, G, B)")
        if min(self.pixel_std) <= 0:
            raise ValueError(f"SamLungConfig.pixel_std must be > 0, got {self.pixel_std}")
        if self.mpp is not None and self.mpp <= 0:
            raise ValueError(f"SamLungConfig.mpp must be > 0 or None, got {self.mpp}")
        if self.tune is not None and self.tune not in TUNE_MODES:
            raise ValueError(f"SamLungConfig.tune must be one of {', '.join(TUNE_MODES)} or None, got {self.tune!r}")
        if self.encoder_weights not in ENCODER_WEIGHTS:
            raise ValueError(f"SamLungConfig.encoder_weights must be one of {', '.join(ENCODER_WEIGHTS)}, "
                             f"got {self.encoder_weights!r}")

    @classmethod
    def vit_b(cls, num_classes: int = 1, **overrides: Any) -> SamLungConfig:
        """The real model: SAM ViT-B encoder at 1024 px tiles, 0.5 microns per pixel."""
        return cls(**{"preset": "vit_b", "num_classes": num_classes, **overrides})

    @classmethod
    def tiny(cls, num_classes: int = 1, **overrides: Any) -> SamLungConfig:
        """Same code with small dims and 256 px tiles, for tests and CPU demos."""
        small = dict(preset="tiny", img_size=256, embed_dim=64, depth=4, num_heads=2, window_size=4,
                     global_attn_indexes=(1, 3), out_chans=32, adapter_dim=8, head_channels=8)
        return cls(**{**small, "num_classes": num_classes, **overrides})

    @property
    def default_tune(self) -> str:
        """What fine-tuning trains unless told: the adapters and the head on the official SAM
        encoder, the whole network on an encoder that is random or was trained whole already."""
        return "mona" if self.encoder_weights == "sam" else "full"

    @property
    def grid_size(self) -> int:
        """Token grid side at ``img_size`` (64 for vit_b)."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamLungConfig:
        """Rebuild a config from ``to_dict()`` output, checking every key and value type.

        Keys missing from ``data`` take the value of its preset (so older checkpoints keep
        loading when a field is added); unknown or ill-typed keys are a ``ValueError`` naming the key.
        """
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a dict, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        unknown = sorted(str(k) for k in data if k not in hints)
        if unknown:
            raise ValueError(f"model config has unknown key(s): {', '.join(unknown)}")
        values = {name: _checked(name, value, hints[name]) for name, value in data.items()}
        preset = values.get("preset")
        base = PRESETS[preset]() if preset in PRESETS else cls()
        return dataclasses.replace(base, **values)


PRESETS = {"vit_b": SamLungConfig.vit_b, "tiny": SamLungConfig.tiny}


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field's type (list -> tuple, int -> float), or a ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _checked(name, value, hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"model config key {name!r}: expected a list, got {type(value).__name__}")
        return tuple(_checked(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str) and isinstance(value, hint) and not isinstance(value, bool):
        return value
    raise ValueError(f"model config key {name!r}: expected {hint.__name__}, got {value!r}")
