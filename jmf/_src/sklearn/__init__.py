"""scikit-learn estimators backed by jmf's solvers and driver (the public face is :mod:`jmf.sklearn`).

``_validation`` (parameters, input data, keys, precision) <- ``_run`` (the driver, the
half-step solver of ``transform``, stopping measures, reported errors) <- ``_base`` (the
shared NMF base) <- one module per estimator: ``nmf`` (NMF, non_negative_factorization),
``minibatch`` (MiniBatchNMF), ``svd`` (TruncatedSVD), ``mf`` (MatrixFactorization and the
solver-transformer base) <- ``completion`` (MatrixCompletion); ``ratings`` (RatingsRegressor);
``checks``.  Nothing here imports the public ``jmf`` package.
"""
