"""Export a model (ours or an official YOLOv5 .pt) to TorchScript and ONNX, saved beside the weights.

Usage:
    python export.py --weights yolov5n.pt --include torchscript onnx --imgsz 640 --batch-size 1 --device cpu

The exported graph is the fused eval model and returns only the decoded tensor (B, N, 5 + nc): xywh in input
pixels, sigmoid objectness and class scores, ready for ``non_max_suppression``. TorchScript files carry
``config.txt`` (JSON: shape, stride, names) as an extra file.
"""
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn

if __package__ in (None, ''):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.checkpoint import load_model  # noqa: E402
from utils.cli import ArgumentParser, run_cli  # noqa: E402
from utils.download import resolve_weights  # noqa: E402
from utils.runs import is_writable_dir, select_device  # noqa: E402

FORMATS = ('torchscript', 'onnx')


class DecodedOutput(nn.Module):
    """Wraps a Model so that forward returns only the decoded predictions (what export consumers want)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]


def export_torchscript(wrapped, im, path, meta):
    with warnings.catch_warnings():  # torch announces the deprecation of tracing on every call
        warnings.simplefilter('ignore', FutureWarning)
        traced = torch.jit.trace(wrapped, im, strict=False)
    traced.save(str(path), _extra_files={'config.txt': json.dumps(meta)})
    return path


def export_onnx(wrapped, im, path, opset=12):
    """ONNX through the TorchScript-based exporter; None (with a message) when ``onnx`` is not installed."""
    if importlib.util.find_spec('onnx') is None:
        print('ONNX export skipped: the onnx package is not installed (pip install onnx)', file=sys.stderr)
        return None
    with warnings.catch_warnings():  # the TorchScript-based exporter is announced as legacy
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(wrapped, im, str(path), opset_version=opset, input_names=['images'],
                          output_names=['output0'], do_constant_folding=True, dynamo=False)
    return path


def _image_size(imgsz):
    sizes = [int(s) for s in (imgsz if isinstance(imgsz, (list, tuple)) else [imgsz])]
    h, w = (sizes * 2)[:2]
    if h <= 0 or w <= 0:
        raise ValueError(f'--imgsz {imgsz}: sizes must be positive')
    return h, w


def run(weights='yolov5s.pt', include=('torchscript', 'onnx'), imgsz=640, batch_size=1, device='cpu', opset=12):
    """Export ``weights`` to the formats in ``include``, beside the weights; returns the written paths."""
    unknown = [f for f in include if f not in FORMATS]
    if unknown:
        raise ValueError(f"--include {' '.join(unknown)}: unknown format (choose from {', '.join(FORMATS)})")
    if batch_size < 1:
        raise ValueError(f'--batch-size {batch_size}: must be at least 1')
    weights = resolve_weights(weights)
    if not is_writable_dir(weights.parent):
        raise ValueError(f'{weights.parent}: read-only folder; exports are written beside the weights, '
                         f'so copy {weights.name} somewhere writable first')
    device = select_device(device)
    model = load_model(weights, device=device, fuse=True)
    for p in model.parameters():
        p.requires_grad_(False)
    h, w = _image_size(imgsz)
    stride = int(model.stride.max())
    if h % stride or w % stride:
        raise ValueError(f'--imgsz {imgsz}: must be a multiple of the model stride {stride}')
    im = torch.zeros(batch_size, 3, h, w, device=device)
    wrapped = DecodedOutput(model).eval()
    with torch.no_grad():
        wrapped(im)  # one dry run: shapes settle and errors surface before writing files
    meta = {'shape': list(im.shape), 'stride': stride, 'names': list(model.names)}
    written = [export_torchscript(wrapped, im, weights.with_suffix('.torchscript'), meta)] \
        if 'torchscript' in include else []
    if 'onnx' in include:
        written.append(export_onnx(wrapped, im, weights.with_suffix('.onnx'), opset))
    written = [p for p in written if p is not None]
    if not written:
        raise ValueError(f"--include {' '.join(include)}: nothing could be exported (see the note above)")
    for p in written:
        print(f'Exported {p} ({p.stat().st_size / 1e6:.1f} MB)')
    return written


def parse_args(argv=None):
    parser = ArgumentParser(description='Export a YOLOv5 model to TorchScript and ONNX.')
    parser.add_argument('--weights', default='yolov5s.pt', help='our checkpoint or an official .pt')
    parser.add_argument('--include', nargs='+', default=['torchscript', 'onnx'], choices=FORMATS)
    parser.add_argument('--imgsz', '--img', nargs='+', type=int, default=[640], help='image size h (w)')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--device', default='cpu', help="'cpu' or a CUDA index such as 0")
    parser.add_argument('--opset', type=int, default=12, help='ONNX opset')
    return parser.parse_args(argv)


def main(argv=None):
    run_cli(run, parse_args(argv))


if __name__ == '__main__':
    main()
