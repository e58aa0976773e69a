"""Datasets: MovieLens (local folder, cache or verified download), ratings files, synthetic ratings.

>>> import jax, jmf
>>> r = jmf.datasets.movielens("100k", path="ml-100k")     # doctest: +SKIP
>>> r.data, r.users, r.items                                # doctest: +SKIP
(Sparse (943, 1682), the raw user ids, the raw item ids)
>>> s = jmf.datasets.synthetic_ratings(jax.random.key(0), n_users=50, n_items=40, n_ratings=400)
>>> s.data.shape, s.data.nnz                                # built-in data with a known truth
((50, 40), 400)
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
