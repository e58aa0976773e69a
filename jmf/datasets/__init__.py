"""Datasets: MovieLens (local folder, cache or verified download), ratings files, synthetic ratings.

>>> r = jmf.datasets.movielens("100k", path="ml-100k")     # doctest: +SKIP
>>> r.data, r.users, r.items                                # Sparse (943, 1682) and the raw ids
>>> s = jmf.datasets.synthetic_ratings(jax.random.key(0))   # built-in default with a known truth
"""

from jmf._src.datasets import (
    ARCHIVES,
    Ratings,
    SyntheticRatings,
    data_home,
    download,
    extract_zip,
    index_ratings,
    movielens,
    movielens_path,
    ratings_from_scipy,
    read_ratings,
    synthetic_ratings,
)

__all__ = ["ARCHIVES", "Ratings", "SyntheticRatings", "data_home", "download", "extract_zip", "index_ratings",
           "movielens", "movielens_path", "ratings_from_scipy", "read_ratings", "synthetic_ratings"]
