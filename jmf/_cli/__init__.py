"""The ``jmf`` command's implementation: :mod:`jmf.cli` holds its entry point, ``main``.

* :mod:`.parser` -- the command line: help texts, argument types, usage errors;
* :mod:`.fit` -- ``jmf fit``: one matrix or ratings file, a solver or the default ratings model;
* :mod:`.recommend` -- ``jmf recommend``: top-n items from a saved model;
* :mod:`.experiment` -- ``jmf experiment``: a resumable grid from a TOML file.
"""
