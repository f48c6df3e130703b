"""zsbench: a benchmark toolkit for zero-shot anomaly detection with CLIP."""

__version__ = "0.1.0"

__all__ = ["__version__"]
