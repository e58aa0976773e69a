"""The ``jmf`` command: factorize a matrix file, or run an experiment grid.

    jmf fit data.npy --rank 10                      # A ~ W H with the default solver, summary printed
    jmf fit ratings.csv --holdout 0.2 --out model.npz   # the default ratings model, rank chosen on the data
    jmf fit u1.base --test u1.test --json           # evaluate on a given test file
    jmf recommend model.npz --user 1 -n 10 --items movies.csv
    jmf experiment grid.toml --out results/grid     # resumable grid of fits, table and figures
    jmf solvers                                     # what --solver accepts

Exit status: 0 on success, 2 for a usage problem (missing file, unknown
solver, bad option), 1 if a fit diverged.

This module is the entry point (``main``); the commands live in :mod:`jmf._cli`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from jmf._cli.experiment import cmd_experiment
from jmf._cli.fit import cmd_fit
from jmf._cli.parser import (
    _EXAMPLE_TOML,  # noqa: F401  (read here by tests/test_experiments.py)
    UsageError,
    build_parser,
    print_error,
)
from jmf._cli.recommend import cmd_recommend


def _fail(parser: argparse.ArgumentParser, message: str) -> int:
    print_error(parser.prog, message)
    return 2


def _cmd_solvers() -> int:
    from jmf._src.registry import describe_solvers

    print("solvers (use with --solver NAME and -p KEY=VALUE, or solver = \"NAME\" in an experiment file;\n"
          "a pair is written -p l2=[0.1,0.2], none/null where allowed):")
    print(describe_solvers())
    return 0


def _cmd_version() -> int:
    import jax

    import jmf

    print(f"jmf {jmf.__version__}, jax {jax.__version__}, devices: {', '.join(str(d) for d in jax.devices())}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``jmf`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    if args.version:
        return _cmd_version()
    if args.command is None:
        parser.print_help()
        return 2
    sub = parser._subparsers._group_actions[0].choices[args.command]
    try:
        if args.command == "fit":
            return cmd_fit(args)
        if args.command == "experiment":
            return cmd_experiment(args)
        if args.command == "recommend":
            return cmd_recommend(args)
        return _cmd_solvers()
    except UsageError as exc:
        return _fail(sub, str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
