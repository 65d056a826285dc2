"""Models: tensors in, tensors out. No files, no numpy, no side effects on import."""

from .descriptor import ModelDescriptor, TilingPolicy, build_model, describe
from .face import FaceConfig, FaceRestorer, face_presets
from .heads import (
    DirectRegression,
    HeadOutput,
    IndexPrediction,
    SoftQuantizer,
    VectorQuantizer,
    VectorRegression,
    oracle_weights,
)
from .plain import PlainConfig, PlainRestorer
from .sr import SRConfig, SRRestorer, sr_presets
from .vqgan import VQAutoEncoder, VQConfig

__all__ = [
    "DirectRegression", "FaceConfig", "FaceRestorer", "HeadOutput", "IndexPrediction", "ModelDescriptor",
    "PlainConfig", "PlainRestorer",
    "SRConfig", "SRRestorer", "SoftQuantizer", "TilingPolicy", "VQAutoEncoder", "VQConfig", "VectorQuantizer",
    "VectorRegression", "build_model", "describe", "face_presets", "oracle_weights", "preset", "sr_presets",
]


def preset(name: str) -> FaceConfig | SRConfig:
    """Config of a named preset (face-tiny, face-s, face-base, sr-tiny, sr-x4-s, sr-x2-s, sr-x4-base)."""
    table = {**face_presets(), **sr_presets()}
    if name not in table:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(table)}")
    return table[name]
