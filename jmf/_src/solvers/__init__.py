"""Solvers: pure ``init``/``step`` pairs driven by :func:`jmf.fit`."""
