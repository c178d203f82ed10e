"""Data: offline corpora with provenance, tokenizers, tokenization into packed rows, hub streaming, and the
mixture sampler the training loop draws its batches from."""
