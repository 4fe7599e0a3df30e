"""The scikit-learn conventions every clustering estimator follows.

The constructor stores its arguments as given and checks them with
:func:`hyperseg.cluster._validation.check_params` (against the class's
``_RULES`` and ``_AT_LEAST``); ``fit`` checks them again, so an attribute
changed in between is caught too. Fitted state carries a trailing
underscore (``labels_``, ``cluster_centers_``, ...); ``predict`` before
``fit`` raises :class:`hyperseg.errors.NotFittedError`.
"""
from __future__ import annotations

import inspect
from typing import Any, ClassVar, Mapping

from ..errors import NotFittedError
from ._validation import Rule, check_params

__all__ = ["Estimator"]


class Estimator:
    """``get_params``, ``__repr__``, ``fit_predict`` and the parameter / fitted-state checks."""

    _RULES: ClassVar[Mapping[str, Rule]] = {}
    _AT_LEAST: ClassVar[tuple[tuple[str, str], ...]] = ()

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments by name, as stored (scikit-learn convention)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_params(self) -> None:
        check_params(type(self).__name__, self.get_params(), self._RULES, self._AT_LEAST)

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(f"{type(self).__name__}: this estimator is not fitted yet; call fit(X) first")

    def fit(self, X, y=None):  # pragma: no cover - every estimator defines it
        raise NotImplementedError

    def fit_predict(self, X, y=None):
        """``fit(X).labels_``."""
        return self.fit(X).labels_
