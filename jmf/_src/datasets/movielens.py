"""MovieLens ratings (GroupLens): local folders, a cache, and checksum-verified downloads.

Variants and their official layouts:

=============  ==========================  ===============================================
variant        ratings file                layout
=============  ==========================  ===============================================
``100k``       ``ml-100k/u.data``          tab-separated ``user item rating timestamp``
``1m``         ``ml-1m/ratings.dat``       ``UserID::MovieID::Rating::Timestamp``
``10m``        ``ml-10M100K/ratings.dat``  as 1m
``20m``        ``ml-20m/ratings.csv``      CSV with header ``userId,movieId,rating,timestamp``
``25m``        ``ml-25m/ratings.csv``      as 20m
``latest-small`` ``ml-latest-small/ratings.csv``  as 20m
=============  ==========================  ===============================================

Checksums
---------
The archives' SHA-256 digests and sizes are pinned in :data:`ARCHIVES`.  They
are the values recorded for the same URLs by TensorFlow Datasets
(``tensorflow_datasets/url_checksums/movielens.txt``); GroupLens itself only
publishes MD5 sums.  ``ml-latest-small`` is a "latest" snapshot that GroupLens
may regenerate: if the digest no longer matches, the download is refused
(never silently accepted) -- download the archive yourself, check it, and pass
the extracted folder as ``path`` (or ``sha256=None`` to skip the check
knowingly).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from typing import Optional

from .ratings import index_ratings
from .readers import read_ratings

__all__ = ["movielens", "movielens_path", "ARCHIVES", "data_home", "download", "extract_zip"]

_BASE = "https://files.grouplens.org/datasets/movielens/"

# variant -> (archive name, folder inside the archive, ratings file, size in bytes, sha256)
ARCHIVES = {
    "100k": ("ml-100k.zip", "ml-100k", "u.data", 4924029,
             "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),
    "1m": ("ml-1m.zip", "ml-1m", "ratings.dat", 5917549,
           "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "10m": ("ml-10m.zip", "ml-10M100K", "ratings.dat", None, None),
    "20m": ("ml-20m.zip", "ml-20m", "ratings.csv", 198702078,
            "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"),
    "25m": ("ml-25m.zip", "ml-25m", "ratings.csv", 261978986,
            "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),
    "latest-small": ("ml-latest-small.zip", "ml-latest-small", "ratings.csv", 978202,
                     "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"),
}
_ALIASES = {"ml-100k": "100k", "ml-1m": "1m", "ml-10m": "10m", "ml-20m": "20m", "ml-25m": "25m",
            "ml-latest-small": "latest-small", "small": "latest-small"}


def data_home(data_home: Optional[str] = None) -> str:
    """The cache folder: ``data_home``, else ``$JMF_DATA``, else ``~/.cache/jmf``."""
    if data_home is not None:
        return os.fspath(data_home)
    return os.environ.get("JMF_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "jmf")


def _variant(variant: str) -> str:
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a string such as '100k' or 'latest-small', got {type(variant).__name__}")
    v = _ALIASES.get(variant.lower(), variant.lower())
    if v not in ARCHIVES:
        raise ValueError(f"unknown MovieLens variant {variant!r}; choose one of {sorted(ARCHIVES)}")
    return v


def _find_ratings_file(folder: str, v: str) -> Optional[str]:
    """The ratings file of variant ``v`` in ``folder`` or in its official sub-folder."""
    _, sub, fname, _, _ = ARCHIVES[v]
    for cand in (os.path.join(folder, fname), os.path.join(folder, sub, fname)):
        if os.path.isfile(cand):
            return cand
    return None


def _check_digest(sha256, name: str = "sha256") -> Optional[str]:
    """A SHA-256 hex digest (lower-cased), or None to skip the check; an empty or malformed string is an error.

    ``sha256=""`` (e.g. an unset variable) used to mean "no check" silently.
    """
    if sha256 is None:
        return None
    if not isinstance(sha256, str):
        raise TypeError(f"{name} must be a hex digest string or None, got {type(sha256).__name__}")
    digest = sha256.strip().lower()
    if not digest:
        raise ValueError(f"{name} is empty: give the archive's SHA-256 hex digest, or None to skip the check knowingly")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{name} must be a SHA-256 hex digest (64 hex characters), got {sha256!r}")
    return digest


def sha256sum(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str, sha256: Optional[str], size: Optional[int] = None, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` atomically, checking the size and SHA-256 before keeping it.

    Raises
    ------
    OSError
        When the network is unavailable or the transfer fails.
    ValueError
        When the size or digest does not match (the partial file is deleted).
    """
    import urllib.request

    sha256 = _check_digest(sha256)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dest)), suffix=".part")
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                out.write(block)
                h.update(block)
                n += len(block)
        if size is not None and n != size:
            raise ValueError(f"{url}: downloaded {n} bytes, expected {size}")
        if sha256 is not None and h.hexdigest() != sha256:
            raise ValueError(f"{url}: SHA-256 {h.hexdigest()} does not match the pinned {sha256}; refusing the file")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


#: Written into every folder :func:`extract_zip` creates; only such folders are ever replaced.
EXTRACT_MARKER = ".jmf-extracted"


def extract_zip(archive: str, dest: str) -> None:
    """Extract ``archive`` into ``dest``, refusing absolute paths, ``..`` components and links.

    Members are written into a temporary folder beside their final place and
    renamed into it, so an interrupted extraction never leaves a half-written
    dataset behind.  Each extracted top-level folder gets a marker file
    (:data:`EXTRACT_MARKER`); an existing folder of the same name is replaced
    only if it carries that marker -- anything else (user data) makes the
    extraction fail with :class:`FileExistsError` before anything is written.
    """
    dest = os.path.abspath(dest)
    os.makedirs(dest, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        tops = set()
        for info in zf.infolist():
            name = info.filename
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
                raise ValueError(f"{archive}: unsafe member path {name!r}; refusing to extract")
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise ValueError(f"{archive}: member {name!r} is a symbolic link; refusing to extract")
            target = os.path.abspath(os.path.join(dest, name))
            if os.path.commonpath([dest, target]) != dest:
                raise ValueError(f"{archive}: member {name!r} escapes the destination; refusing to extract")
            tops.add(parts[0])
        for top in sorted(tops):
            final = os.path.join(dest, top)
            if os.path.lexists(final) and not _extracted_by_jmf(final):
                raise FileExistsError(f"{final!r} exists and was not extracted by jmf; refusing to replace it "
                                      f"with the contents of {archive} (move it away, or pass its folder as path)")
        tmp = tempfile.mkdtemp(dir=dest, prefix=".extract-")
        try:
            zf.extractall(tmp)
            for entry in os.listdir(tmp):
                new = os.path.join(tmp, entry)
                if os.path.isdir(new) and not os.path.islink(new):
                    with open(os.path.join(new, EXTRACT_MARKER), "w") as fh:
                        fh.write(f"extracted by jmf from {os.path.basename(archive)}\n")
                final = os.path.join(dest, entry)
                old = None
                if os.path.lexists(final):  # a previous extraction (checked above): set it aside, then drop it
                    old = os.path.join(tmp, ".old-" + entry)
                    os.replace(final, old)
                os.replace(new, final)
                if old is not None:
                    shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.unlink(old)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _extracted_by_jmf(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path) and os.path.isfile(os.path.join(path, EXTRACT_MARKER))


def movielens_path(variant: str, path: Optional[str] = None, *, download_if_missing: bool = True,
                   cache: Optional[str] = None, sha256: "str | None | bool" = True) -> str:
    """Path of the ratings file of a MovieLens variant, downloading it if needed.

    Looks in ``path`` (a folder holding the ratings file or the official
    sub-folder, or the ratings file itself), then in the cache
    (:func:`data_home`); if absent and ``download_if_missing``, downloads the
    official archive into the cache, verifies it and extracts it.

    ``sha256=True`` uses the pinned digest, a hex digest string overrides it,
    ``None`` skips the check (not recommended); an empty string is an error.
    """
    v = _variant(variant)
    if path is not None:
        path = os.fspath(path)
        if os.path.isfile(path):
            return path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"path {path!r} does not exist")
        found = _find_ratings_file(path, v)
        if found is None:
            raise FileNotFoundError(f"no MovieLens {v} ratings file ({ARCHIVES[v][2]}) in {path!r} "
                                    f"or {os.path.join(path, ARCHIVES[v][1])!r}")
        return found
    home = data_home(cache)
    found = _find_ratings_file(home, v)
    if found is not None:
        return found
    if not download_if_missing:
        raise FileNotFoundError(f"MovieLens {v} is not in the cache {home!r} and download_if_missing=False")
    archive, _, _, size, digest = ARCHIVES[v]
    if sha256 is True:
        if digest is None:
            raise ValueError(f"no pinned SHA-256 for MovieLens {v}; pass sha256='<hex digest>' "
                             "(or sha256=None to skip the check knowingly)")
    else:
        digest = _check_digest(sha256)
        size = None
    zpath = os.path.join(home, archive)
    if not (os.path.isfile(zpath) and (digest is None or sha256sum(zpath) == digest)):
        try:
            download(_BASE + archive, zpath, digest, size)
        except OSError as exc:
            raise OSError(f"MovieLens {v} is not in the cache {home!r} and could not be downloaded "
                          f"({exc}); download {_BASE + archive} yourself and pass its folder as path") from None
    extract_zip(zpath, home)
    found = _find_ratings_file(home, v)
    if found is None:
        raise FileNotFoundError(f"the archive {zpath} did not contain {ARCHIVES[v][1]}/{ARCHIVES[v][2]}")
    return found


def movielens(variant: str = "latest-small", path: Optional[str] = None, *, as_frame: bool = False,
              download_if_missing: bool = True, cache: Optional[str] = None, sha256: "str | None | bool" = True,
              dtype=None):
    """Load MovieLens ratings.

    Parameters
    ----------
    variant : {"100k", "1m", "10m", "20m", "25m", "latest-small"}
    path : str, optional
        A local folder (the extracted archive, or its parent) or the ratings
        file itself; works offline.  Default: the cache, downloading the
        official archive (SHA-256 verified) when it is missing.
    as_frame : bool, default False
        Return the raw table (columns user, item, rating, timestamp with the
        original ids) instead of a :class:`Ratings`.
    download_if_missing, cache, sha256
        See :func:`movielens_path`.
    dtype : float dtype, optional
        Dtype of the ratings in the Sparse (default float32).

    Returns
    -------
    Ratings or pandas.DataFrame
        ``Ratings(data, users, items)``: a :class:`jmf.Sparse` of shape
        (users, movies) with the raw ids of each row and column.
    """
    import numpy as np

    fpath = movielens_path(variant, path, download_if_missing=download_if_missing, cache=cache, sha256=sha256)
    df = read_ratings(fpath)
    if as_frame:
        return df
    return index_ratings(df, dtype=np.float32 if dtype is None else dtype)
