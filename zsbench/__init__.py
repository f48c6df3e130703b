"""zsbench: a benchmark toolkit for zero-shot anomaly detection with CLIP."""

__version__ = "0.1.0"

__all__ = ["__version__", "predict"]


def __getattr__(name: str):
    """``zsbench.predict`` (:func:`zsbench.prediction.predict`) on first use, so that
    ``import zsbench`` stays light (no torch import). The module is named ``prediction``: a
    submodule ``zsbench.predict`` would shadow the function once imported."""
    if name == "predict":
        from zsbench.prediction import predict

        return predict
    raise AttributeError(f"module 'zsbench' has no attribute {name!r}")
