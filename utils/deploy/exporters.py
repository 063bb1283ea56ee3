"""Writing a fused eval model to TorchScript, ONNX and OpenVINO, each with its metadata (``export_metadata``).

Every exported graph maps a (b, 3, h, w) float batch in [0, 1] to the decoded predictions (b, n, 5 + nc), which
``utils/deploy/backends.load_backend`` reads back. The ONNX and OpenVINO packages are imported only here, lazily.

    meta = export_metadata(model.names, 32, im.shape, dynamic=False)
    export_onnx(DecodedOutput(model), im, Path('best.onnx'), meta, dynamic=True, simplify=True)
"""
import copy
import json
import sys
import warnings

import torch
import torch.nn as nn
import yaml

from utils.optional import MissingPackage, require


class DecodedOutput(nn.Module):
    """Wraps a Model so that forward returns only the decoded predictions (what export consumers want)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


def export_torchscript(wrapped, im, path, meta):
    """A traced module. Our Detect computes its grids from the input shape, so the trace takes any size."""
    with warnings.catch_warnings():  # torch announces the deprecation of tracing on every call
        warnings.simplefilter('ignore', FutureWarning)
        traced = torch.jit.trace(wrapped, im, strict=False)
    traced.save(str(path), _extra_files={'config.txt': json.dumps({**meta, 'dynamic': True})})
    return path


def _slim(model, path):
    """onnxslim's simplification, or the model unchanged (with a note) when onnxslim is absent."""
    try:
        onnxslim = require('onnxslim', feature='--simplify')
    except MissingPackage as e:
        print(f'note: {e}; {path.name} is written unsimplified', file=sys.stderr)
        return model
    return onnxslim.slim(model)


def export_onnx(wrapped, im, path, meta, opset=12, dynamic=False, simplify=False):
    """ONNX through the TorchScript-based exporter, names and shapes in ``metadata_props``.

    ``dynamic``: batch, height and width are symbolic. Raises MissingPackage when ``onnx`` is not installed.
    """
    onnx = require('onnx', feature='ONNX export')
    axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}, 'output0': {0: 'batch', 1: 'anchors'}}
    with warnings.catch_warnings():  # the TorchScript-based exporter is announced as legacy
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(wrapped, im, str(path), opset_version=opset, input_names=['images'],
                          output_names=['output0'], do_constant_folding=True, dynamo=False,
                          dynamic_axes=axes if dynamic else None)
    model = onnx.load(str(path))
    if simplify:
        model = _slim(model, path)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))
    return path


def export_openvino(wrapped, im, folder, meta, dynamic=False, half=False):
    """``folder``/<stem>.xml + .bin + metadata.yaml, converted from the PyTorch module (no ONNX needed).

    ``half`` stores FP16 weights (``compress_to_fp16``); the model still takes and returns FP32.
    """
    ov = require('openvino', feature='OpenVINO export')
    module = copy.deepcopy(wrapped).float().cpu()  # OpenVINO runs on the CPU: convert from an FP32 CPU copy
    example = im.float().cpu()
    shape = (-1, 3, -1, -1) if dynamic else tuple(example.shape)
    with warnings.catch_warnings():  # conversion traces the module, which torch announces as deprecated
        warnings.simplefilter('ignore', FutureWarning)
        model = ov.convert_model(module, example_input=example, input=[shape])
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / f"{folder.name.removesuffix('_openvino_model')}.xml"), compress_to_fp16=half)
    (folder / 'metadata.yaml').write_text(yaml.safe_dump(meta, sort_keys=False))
    return folder
