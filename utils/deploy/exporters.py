"""Writing a fused eval model to TorchScript, ONNX, OpenVINO and TFLite, each with its metadata (``export_metadata``).

Every exported graph maps a (b, 3, h, w) float batch in [0, 1] (TFLite: (b, h, w, 3), the layout LiteRT apps feed)
to the decoded predictions (b, n, 5 + nc), which ``utils/deploy/backends.load_backend`` reads back. The ONNX, OpenVINO and
litert-torch packages are imported only here, lazily.

    meta = export_metadata(model.names, 32, im.shape, dynamic=False)
    export_onnx(DecodedOutput(model), im, Path('best.onnx'), meta, dynamic=True, simplify=True)
"""
import copy
import json
import sys
import warnings
import zipfile

import torch
import torch.nn as nn
import yaml

from utils.deploy.backends import TFLITE_METADATA
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
    module, example = _fp32_cpu(wrapped, im)  # OpenVINO runs on the CPU
    shape = (-1, 3, -1, -1) if dynamic else tuple(example.shape)
    with warnings.catch_warnings():  # conversion traces the module, which torch announces as deprecated
        warnings.simplefilter('ignore', FutureWarning)
        model = ov.convert_model(module, example_input=example, input=[shape])
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / f"{folder.name.removesuffix('_openvino_model')}.xml"), compress_to_fp16=half)
    (folder / 'metadata.yaml').write_text(yaml.safe_dump(meta, sort_keys=False))
    return folder


def _fp32_cpu(wrapped, im):
    """An FP32 CPU copy of the module and of the example batch: what the CPU-side converters start from."""
    return copy.deepcopy(wrapped).float().cpu(), im.float().cpu()


def export_tflite(wrapped, im, path, meta, half=False):
    """``path`` (.tflite) through litert-torch: PyTorch to LiteRT directly, without TensorFlow or ONNX.

    The input is channels-last (b, h, w, 3) float32, fixed in size; the output is the decoded (b, n, 5 + nc).
    ``half`` stores FP16 weights (litert-torch's fp16 weight-only recipe); the model still takes and returns
    FP32. ``meta`` travels as a JSON zip entry appended to the flatbuffer (read it with ``zipfile``).
    Raises MissingPackage when ``litert-torch`` is not installed.
    """
    litert_torch = require('litert_torch', 'litert-torch', feature='TFLite export')
    quant = None
    if half:
        quant = require('litert_torch.generative.quantize.quant_recipes', 'litert-torch').full_fp16_recipe()
    module, example = _fp32_cpu(wrapped, im)
    channels_last = litert_torch.to_channel_last_io(module, args=[0]).eval()
    with torch.no_grad():
        edge = litert_torch.convert(channels_last, (example.permute(0, 2, 3, 1).contiguous(),), quant_config=quant)
    edge.export(str(path))
    with zipfile.ZipFile(path, 'a') as zf:
        zf.writestr(TFLITE_METADATA, json.dumps(meta))
    return path
