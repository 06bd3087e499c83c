"""Library versions recorded next to every result, so a number can be traced to the code that made it."""

from __future__ import annotations

import platform


def versions() -> dict[str, str]:
    import numpy
    import scipy
    import sklearn
    import torch

    from modscope import __version__

    return {
        "modscope": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
    }
