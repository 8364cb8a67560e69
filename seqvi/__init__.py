"""seqvi: deep sequential latent variable models trained by variational filtering."""

__version__ = "0.1.0"
