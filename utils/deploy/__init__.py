"""The deployment wing: a trained model used outside training.

Owns any weights file (.pt, TorchScript, ONNX, OpenVINO) as one callable (``backends``), several as one
(``ensemble``), test-time augmentation around either (``tta``), writing exports
(``exporters``), image -> detections shared by detect.py and the API (``predict``), the Python API (``api``,
``detections``), detect inputs (``sources``), drawing (``annotate``) and the signal stack kept across OpenVINO's
compile (``signal_stack``).
"""
