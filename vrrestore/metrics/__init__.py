"""Image quality metrics: PSNR/SSIM in the papers' conventions and LPIPS v0.1 without torchvision."""

from .fidelity import psnr, psnr_torch, rgb_to_y, ssim
from .lpips import LPIPS, LPIPSUnavailable, load_lpips

__all__ = ["LPIPS", "LPIPSUnavailable", "load_lpips", "psnr", "psnr_torch", "rgb_to_y", "ssim"]
