"""The one source of jmf's version (read by ``pyproject.toml`` and re-exported as ``jmf.__version__``)."""

__version__ = "0.1.0"
