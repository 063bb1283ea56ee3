"""The data wing: from a data YAML to loader batches.

Owns data YAMLs and hyp files (``config``), their ``download:`` archives fetched and unpacked on first use
(``download``, ``archives``), the label readers for YOLO txt, VOC XML and COCO JSON (``label_formats``), the scan
that checks and caches them (``label_scan``), the dataset and loader with its worker processes and draw order,
``--image-weights`` included (``datasets``), ``--cache`` in RAM or on disk
(``image_cache``), augmentation (``augment``), the built-in shapes set (``shapes``) and the ``--imgsz`` check and
``--multi-scale`` (``sizes``). It imports the freeze wing's class maps and the core helpers, never training or
evaluation.
"""
