"""The training wing: one training run.

Owns the run's one configuration and the line on where a command differs from upstream (``config``), its set-up
steps and its one state (``setup``), the epoch loop, checkpoints and frozen check (``trainer``), one epoch of
training with its LR schedule, warm-up, EMA and Ctrl-C/SIGTERM handling (``engine``), the loss and its anchors
(``loss``), ``--batch-size -1`` (``autobatch``) and what watches a run: results.csv, plots, TensorBoard, MLflow
(``callbacks``).
"""
