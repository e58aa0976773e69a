"""jmf internals: no stable API; the public modules (jmf, jmf.solvers, ...) re-export what users need."""
