"""One experiment: the runner (``runner.py``) and its stages — identity (``keys.py``), the config as
values (``settings.py``), dense training or its cache (``dense.py``), the prune schedule
(``session.py``), training and evaluation (``train.py``), what was removed (``measure.py``) and the
printed summary (``report.py``)."""
