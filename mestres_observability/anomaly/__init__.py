"""Anomaly detection, forecasting and incident response over Prometheus data (the ``anomaly`` extra).

``pip install 'mestres-observability[anomaly]'`` brings numpy and
scikit-learn. Nothing in the library imports this package; the modules that
need the extra raise :class:`~mestres_observability.MissingExtraError` naming
it when it is missing.

* :mod:`.seasonal`: the streaming seasonal detector (standard library only);
* :mod:`.forest`: the seed's IsolationForest done correctly (numpy, scikit-learn);
* :mod:`.detector`: the interface they share, anomalies and severities;
* :mod:`.model`: versioned model files (JSON, never a pickle);
* :mod:`.forecast`: forecasts with prediction intervals, baselines, MASE (numpy);
* :mod:`.source`: range queries against Prometheus (standard library only);
* :mod:`.serve`: ``anomaly serve``, scores and forecasts exported as metrics;
* :mod:`.incidents`: incidents from anomalies and Alertmanager, paged once, in SQLite;
* :mod:`.rules`: the seasonal detector as Prometheus rules with promtool tests;
* :mod:`.nab`: the Numenta Anomaly Benchmark's scoring, to evaluate on your own data;
* :mod:`.shopdata`: the shop benchmark's seeded generator (numpy);
* :mod:`.cli`: the ``anomaly`` and ``incidents`` command groups.
"""
