"""Save and load factors and results as pickle-free ``.npz`` files (atomic writes); read input matrices."""

from jmf._src.datasets.readers import load_matrix
from jmf._src.io import MATRIX_SUFFIXES, atomic_write, load_factors, load_result, save_factors, save_result

__all__ = ["save_factors", "load_factors", "save_result", "load_result", "load_matrix", "atomic_write",
           "MATRIX_SUFFIXES"]
