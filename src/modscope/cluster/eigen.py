"""Largest algebraic eigenpairs of a symmetric operator: Lanczos (ARPACK) or LOBPCG, never shift-invert."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse.linalg as sla


def top_eigenpairs(
    apply: Callable[[np.ndarray], np.ndarray],
    n: int,
    k: int,
    solver: str,
    rng: np.random.Generator,
    tol: float,
    x0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues and ``(n, k)`` eigenvectors of the operator ``apply`` (``x -> A x`` for
    ``x`` of shape ``(n,)`` or ``(n, m)``), with ``solver`` ``"lanczos"`` or ``"lobpcg"``. ``x0`` is
    LOBPCG's start block (random if None); Lanczos starts from a random vector. Unsorted.
    """
    op = sla.LinearOperator((n, n), matvec=apply, matmat=apply, dtype=np.float64)
    if solver == "lanczos":
        ncv = min(n - 1, max(2 * k + 1, 40))
        return sla.eigsh(op, k=k, which="LA", v0=rng.uniform(-1.0, 1.0, n), ncv=ncv, tol=tol)
    if x0 is None:
        x0 = rng.standard_normal((n, k))
    with warnings.catch_warnings():
        # LOBPCG warns when the last digits of its tolerance are not met; k-means does not need them.
        warnings.simplefilter("ignore", UserWarning)
        return sla.lobpcg(op, x0, largest=True, tol=tol, maxiter=300)
