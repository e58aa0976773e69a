"""``jmf recommend MODEL --user ID``: a user's top-n items from a model saved by ``jmf fit --out``."""

from __future__ import annotations

import json
import os

from .parser import UsageError


def cmd_recommend(args) -> int:
    """``jmf recommend MODEL --user ID``: the user's top-n unseen items, with titles from --items."""
    import numpy as np

    import jmf

    try:
        factors, meta = jmf.io.load_factors(args.model, with_metadata=True)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"cannot read model {args.model!r}: {exc}") from None
    arrays = meta.get("arrays", {})
    if "user_ids" not in arrays or "item_ids" not in arrays:
        raise UsageError(f"{args.model!r} has no user and item ids: save it with 'jmf fit RATINGS --out MODEL.npz'")
    users, items = np.asarray(arrays["user_ids"]), np.asarray(arrays["item_ids"])
    raw = args.user
    if users.dtype.kind in "iuf":
        try:
            raw = users.dtype.type(float(args.user))
        except ValueError:
            raise UsageError(f"--user: {args.user!r} is not an id of this model (ids are numbers)") from None
    hit = np.flatnonzero(users.astype(str) == str(raw)) if users.dtype.kind not in "iuf" else np.flatnonzero(
        users == raw)
    if hit.size == 0:
        raise UsageError(f"--user: {args.user!r} is not in the model ({len(users)} users, ids "
                         f"{users[0]} ... {users[-1]}); a new user has no factors to rank with")
    n_items = len(items)
    if args.n > n_items:
        raise UsageError(f"-n {args.n}: the model has only {n_items} items")
    titles = _item_titles(args.items, items) if args.items is not None else None
    seen = None
    if "train_rows" in arrays:
        r, c = np.asarray(arrays["train_rows"]), np.asarray(arrays["train_cols"])
        seen = jmf.Sparse(r, c, np.ones(len(r), np.float32), shape=(len(users), n_items))
    ranked, scores = jmf.cf.recommend(jmf.Factors(*(np.asarray(x) if x is not None else None for x in factors)),
                                      hit[:1], n=args.n, exclude_seen=seen is not None, seen=seen)
    ranked, scores = np.asarray(ranked)[0], np.asarray(scores)[0]
    offset = float(np.asarray(factors.offset)) if factors.offset is not None else 0.0
    row_bias = float(np.asarray(factors.row_bias)[hit[0]]) if factors.row_bias is not None else 0.0
    out = [{"item": items[j].item(), "predicted": float(sc) + offset + row_bias,
            **({"title": titles.get(str(items[j]), "")} if titles is not None else {})}
           for j, sc in zip(ranked, scores) if np.isfinite(sc)]
    if args.json:
        print(json.dumps({"user": raw.item() if hasattr(raw, "item") else raw, "items": out}, indent=1))
        return 0
    print(f"top {len(out)} for user {args.user}" + (" (items rated in training left out)" if seen is not None else ""))
    for i, rec in enumerate(out, 1):
        print(f"{i:3d}. {rec['item']!s:>10}  {rec['predicted']:.2f}" + (f"  {rec['title']}" if titles else ""))
    return 0


def _item_titles(path: str, items) -> dict:
    """Raw item id (as text) -> title, from a table whose first two columns are id and title."""
    import pandas as pd

    if not os.path.isfile(path):
        raise UsageError(f"--items: file not found: {path}")
    try:
        df = pd.read_csv(path, sep=None, engine="python", dtype=str, encoding_errors="replace")
    except (ValueError, OSError) as exc:
        raise UsageError(f"--items: cannot read {path!r}: {exc}") from None
    if df.shape[1] < 2:
        raise UsageError(f"--items: {path!r} needs at least two columns (item id, title)")
    ids = df.iloc[:, 0].astype(str).str.strip()
    if items.dtype.kind == "f":  # ids read as floats: match "1.0" to "1"
        ids = ids.str.replace(r"\.0$", "", regex=True)
    return dict(zip(ids, df.iloc[:, 1].astype(str)))


