"""The weights wing: files of weights in and out.

Owns our checkpoints (atomic save, safe load; ``checkpoint``) and official YOLOv5 ``.pt`` files (``official``):
found on disk or downloaded on request, read through an allow-list, and a damaged or foreign ``.pt`` named in
one line.
"""
