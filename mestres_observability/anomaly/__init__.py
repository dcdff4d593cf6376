"""Anomaly detection, forecasting and incident response over Prometheus data (the ``anomaly`` extra).

``pip install 'mestres-observability[anomaly]'`` brings numpy and
scikit-learn. Nothing in the library imports this package; the modules that
need the extra raise :class:`~mestres_observability.MissingExtraError` naming
it when it is missing.

* :mod:`.seasonal`: the streaming seasonal detector (standard library only);
* :mod:`.forest`: the seed's IsolationForest done correctly (numpy, scikit-learn);
* :mod:`.detector`: the interface they share, anomalies and severities;
* :mod:`.model`: versioned model files;
* :mod:`.nab`: the Numenta Anomaly Benchmark's scoring, to evaluate on your own data.
"""
