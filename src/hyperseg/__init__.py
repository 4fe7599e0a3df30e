"""hyperseg: unsupervised hierarchical 3D segmentation with hyperbolic representations."""
__version__ = "0.1.0"

__all__ = ["HyperbolicSegmenter", "__version__"]


def __getattr__(name: str):
    """Import the API lazily, so that ``import hyperseg`` (and the CLI) stays fast."""
    if name == "HyperbolicSegmenter":
        from .api import HyperbolicSegmenter

        return HyperbolicSegmenter
    raise AttributeError(f"module 'hyperseg' has no attribute {name!r}")
