"""sparsenet: sparse and convolutional neural networks in plain NumPy, accelerated by Numba."""
import importlib as _importlib
import importlib.util as _ilu
import pathlib as _pathlib
import sys as _sys


def _locate_kernels():
    """Import ``sparsenet.kernels``.

    Installed (wheel or editable), it is a regular subpackage.  Imported straight from a source
    checkout (the repo root on sys.path, nothing installed), it lives in the sibling folder
    ``kernels/``: load that folder under its package name, so it is compiled and cached once.
    """
    try:
        return _importlib.import_module(f"{__name__}.kernels")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.kernels":
            raise
        src = _pathlib.Path(__file__).resolve().parent.parent / "kernels"
        if not (src / "__init__.py").is_file():
            raise
        spec = _ilu.spec_from_file_location(
            f"{__name__}.kernels", src / "__init__.py", submodule_search_locations=[str(src)]
        )
        kernels = _ilu.module_from_spec(spec)
        _sys.modules[spec.name] = kernels
        spec.loader.exec_module(kernels)
    return kernels


kernels = _locate_kernels()

from .csr import CSRMatrix  # noqa: E402
from . import functional  # noqa: E402
from .connectivity import LayerCost, connectivity_costs  # noqa: E402
from . import nn, optim  # noqa: E402
from . import data, io, train  # noqa: E402  (plot and cli are imported on use: matplotlib, argparse)

__version__ = "0.1.0"
__all__ = ["CSRMatrix", "functional", "kernels", "__version__"]
__all__ += ["nn", "optim", "data", "io", "train"]
from . import sparsity  # noqa: E402
__all__ += ["sparsity"]
__all__ += ["connectivity_costs", "LayerCost"]
