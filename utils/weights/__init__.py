"""The weights wing: files of weights in and out.

Owns our checkpoints (atomic save, safe load; ``checkpoint``), naming damaged or foreign ``.pt`` files
(``checkpoint_probe``), official YOLOv5 ``.pt`` read through an allow-list (``official``) and weight downloads
(``download``).
"""
