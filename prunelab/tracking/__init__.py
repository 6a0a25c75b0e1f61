"""Tracking: the MLflow store and what a run records (``store.py``), the MLflow UI and its links
(``ui.py``), and the local servers prunelab starts (``servers.py``, ``team_server.py``)."""
