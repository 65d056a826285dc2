"""Training: three stages (prior, code, fidelity), resume, DDP and export.

Never imported by the inference path; the ``vrrestore train`` commands import it lazily.
"""

from .config import CodeOptions, FidelityOptions, PriorOptions, TrainConfig
from .export import export
from .loop import TrainResult, train

__all__ = ["CodeOptions", "FidelityOptions", "PriorOptions", "TrainConfig", "TrainResult", "export", "train"]
