"""The freezing and transfer wing, the project's headline.

Owns which layers are frozen and the ``FreezePlan`` that applies, releases and verifies it (``plan``), optimizer
groups over the trainable parameters only (``optim``), the class-by-class weight transfer and its class map (data
class <- checkpoint classes; ``transfer``) and the coco64 transfer sets (``transfer_set``).

Re-exports what the README and docs/freezing.md show: ``from utils.freeze import FreezePlan, freeze, freeze_report``.
"""
from utils.freeze.plan import FreezePlan, freeze, freeze_report  # noqa: F401
