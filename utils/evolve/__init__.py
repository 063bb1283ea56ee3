"""The search wing: ``train.py --evolve``.

Owns the Optuna study and its trials (``study``), the search space (``space``) and the outputs (``report``).
"""
