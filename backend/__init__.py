"""CRS Arena backend: data, catalog, CRS models, LLM runtime, training and evaluation."""

__version__ = "0.1.0"
