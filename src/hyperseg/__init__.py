"""hyperseg: unsupervised hierarchical 3D segmentation with hyperbolic representations."""
__version__ = "0.1.0"
