"""vrrestore: blind face and image restoration with Vector Regression over a VQGAN codebook."""

__version__ = "0.1.0"
