"""Training: three stages (prior, code, fidelity), the no-prior baseline (plain), resume, DDP and export.

Never imported by the inference path; the ``vrrestore train`` commands import it lazily.
"""

from .config import CodeOptions, FidelityOptions, PlainOptions, PriorOptions, TrainConfig
from .export import export
from .loop import TrainResult, train

__all__ = ["CodeOptions", "FidelityOptions", "PlainOptions", "PriorOptions", "TrainConfig", "TrainResult", "export", "train"]
