"""Initializers: ``init(key, data, width, rank=None) -> Factors``."""

from jmf._src.init import (
    INITIALIZERS,
    add_biases,
    get_initializer,
    nndsvd,
    nndsvda,
    nndsvdar,
    normal,
    random,
    svd,
    top_singular_triplets,
    uniform,
)

__all__ = ["random", "uniform", "normal", "svd", "nndsvd", "nndsvda", "nndsvdar", "add_biases", "get_initializer",
           "top_singular_triplets", "INITIALIZERS"]
