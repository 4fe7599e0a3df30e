"""Exceptions shared across hyperseg, importable without pulling in any estimator."""
from __future__ import annotations

__all__ = ["NotFittedError"]


class NotFittedError(ValueError, AttributeError):
    """``predict`` (or a fitted attribute) was used before ``fit``.

    A ``ValueError`` and an ``AttributeError``, as scikit-learn's own
    ``NotFittedError`` is, so code written for either catches it.
    """
