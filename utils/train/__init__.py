"""The training wing: one training run.

Owns the run's set-up steps (``setup``), its epochs, checkpoints and frozen check (``trainer``), warm-up and the
epoch loop (``engine``), the loss (``loss``), the EMA (``ema``), anchors (``autoanchor``), ``--batch-size -1``
(``autobatch``), TensorBoard (``loggers``), where the time goes (``phases``), which epochs are validated
(``val_schedule``), Ctrl-C/SIGTERM (``interrupt``) and the line on where a command differs from upstream
(``upstream_defaults``).
"""
