"""Datasets: MovieLens readers, ratings files, id re-indexing and synthetic ratings."""

from .movielens import ARCHIVES, data_home, download, extract_zip, movielens, movielens_path
from .ratings import Ratings, index_ratings, ratings_from_scipy
from .readers import load_matrix, read_ratings, sniff
from .synthetic import SyntheticRatings, synthetic_ratings

__all__ = ["ARCHIVES", "Ratings", "SyntheticRatings", "data_home", "download", "extract_zip", "index_ratings",
           "movielens", "movielens_path", "ratings_from_scipy", "read_ratings", "synthetic_ratings", "load_matrix",
           "sniff"]
