"""cptlaws: scaling-law studies of continual pre-training (CPT) of language models."""

__version__ = "0.1.0"
