"""Export a model (ours or an official YOLOv5 .pt) to TorchScript, ONNX, OpenVINO and TFLite, beside the weights.

Usage:
    python export.py --weights yolov5n.pt --include torchscript onnx --imgsz 640 --batch-size 1 --device cpu
    python export.py --weights best.pt --include onnx --dynamic --simplify        # any batch and image size
    python export.py --weights best.pt --include openvino                          # best_openvino_model/
    python export.py --weights best.pt --include onnx --half --device 0            # FP16, CUDA only
    python export.py --weights best.pt --include tflite                            # best.tflite (LiteRT)
    python export.py --weights best.pt --include tflite --half                     # best-fp16.tflite, any device

The exported graph is the fused eval model and returns only the decoded tensor (B, N, 5 + nc): xywh in input
pixels, sigmoid objectness and class scores, ready for ``non_max_suppression``. Every export carries its class
names, stride and input shape (TorchScript: ``config.txt`` extra file; ONNX: ``metadata_props``; OpenVINO:
``metadata.yaml``; TFLite: a ``metadata.json`` zip entry appended to the file), so detect.py and val.py run it as
they run the .pt. TFLite exports take channels-last (b, h, w, 3) input of a fixed size; ``--half`` stores their
weights in FP16 on any device (the model still takes and returns FP32).
"""
import sys
from pathlib import Path

import torch

if __package__ in (None, ''):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.deploy.backends import export_metadata  # noqa: E402
from utils.weights.checkpoint import load_model  # noqa: E402
from utils.cli import ArgumentParser, run_cli  # noqa: E402
from utils.weights.official import resolve_weights  # noqa: E402
from utils.deploy.exporters import (DecodedOutput, export_onnx, export_openvino, export_tflite,  # noqa: E402
                                    export_torchscript)
from utils.optional import MissingPackage  # noqa: E402
from utils.runs import is_writable_dir, select_device  # noqa: E402
from utils.errors import InputError

FORMATS = ('torchscript', 'onnx', 'openvino', 'tflite')
HALF_ON_ANY_DEVICE = ('tflite',)  # formats whose --half stores FP16 weights without running the model in FP16


def _image_size(imgsz):
    sizes = [int(s) for s in (imgsz if isinstance(imgsz, (list, tuple)) else [imgsz])]
    h, w = (sizes * 2)[:2]
    if h <= 0 or w <= 0:
        raise InputError(f'--imgsz {imgsz}: sizes must be positive')
    return h, w


def check_options(include, batch_size, half, device):
    unknown = [f for f in include if f not in FORMATS]
    if unknown:
        raise InputError(f"--include {' '.join(unknown)}: unknown format (choose from {', '.join(FORMATS)})")
    if batch_size < 1:
        raise InputError(f'--batch-size {batch_size}: must be at least 1')
    if half and device.type != 'cuda' and any(f not in HALF_ON_ANY_DEVICE for f in include):
        raise InputError(f'--half needs a CUDA device (e.g. --device 0) for {", ".join(include)}; exports on '
                         f'{device.type} are FP32 (only --include tflite --half works on any device)')


def export_format(fmt, wrapped, im, weights, meta, opset, dynamic, simplify, half):
    """Write one format; None (with a one-line note) when its package is not installed."""
    try:
        if fmt == 'torchscript':
            return export_torchscript(wrapped, im, weights.with_suffix('.torchscript'), meta)
        if fmt == 'onnx':
            return export_onnx(wrapped, im, weights.with_suffix('.onnx'), meta, opset, dynamic, simplify)
        if fmt == 'tflite':
            if dynamic:
                print('note: tflite exports take a fixed input size; --dynamic applies to the other formats',
                      file=sys.stderr)
            path = weights.with_name(f"{weights.stem}{'-fp16' if half else ''}.tflite")
            return export_tflite(wrapped, im, path, {**meta, 'dynamic': False}, half)
        return export_openvino(wrapped, im, weights.parent / f'{weights.stem}_openvino_model', meta, dynamic, half)
    except MissingPackage as e:
        print(f'{fmt} export skipped: {e}', file=sys.stderr)
        return None


def run(weights='yolov5s.pt', include=('torchscript', 'onnx'), imgsz=640, batch_size=1, device='cpu', opset=12,
        dynamic=False, simplify=False, half=False):
    """Export ``weights`` to the formats in ``include``, beside the weights; returns the written paths."""
    device = select_device(device)
    check_options(include, batch_size, half, device)
    weights = resolve_weights(weights)
    if not is_writable_dir(weights.parent):
        raise InputError(f'{weights.parent}: read-only folder; exports are written beside the weights, '
                         f'so copy {weights.name} somewhere writable first')
    model = load_model(weights, device=device, fuse=True).set_frozen_fast_path(None)  # a plain graph to trace
    h, w = _image_size(imgsz)
    stride = int(model.stride.max())
    if h % stride or w % stride:
        raise InputError(f'--imgsz {imgsz}: must be a multiple of the model stride {stride}')
    im = torch.zeros(batch_size, 3, h, w, device=device)
    half_graph = half and device.type == 'cuda'  # FP16 arithmetic in the graph (tflite --half: FP16 weights only)
    wrapped = DecodedOutput(model.half() if half_graph else model).eval()
    im = im.half() if half_graph else im
    with torch.no_grad():
        wrapped(im)  # one dry run: shapes settle and errors surface before writing files
    meta = export_metadata(model.names, stride, im.shape, dynamic, half, getattr(model, 'kept_nc', None))
    written = [export_format(fmt, wrapped, im, weights, meta, opset, dynamic, simplify, half)
               for fmt in FORMATS if fmt in include]
    written = [p for p in written if p is not None]
    if not written:
        raise InputError(f"--include {' '.join(include)}: nothing could be exported (see the note above)")
    for p in written:
        size = sum(f.stat().st_size for f in p.rglob('*')) if p.is_dir() else p.stat().st_size
        print(f'Exported {p} ({size / 1e6:.1f} MB)')
    return written


def parse_args(argv=None):
    parser = ArgumentParser(description='Export a YOLOv5 model to TorchScript, ONNX, OpenVINO and TFLite.')
    parser.add_argument('--weights', default='yolov5s.pt', help='our checkpoint or an official .pt')
    parser.add_argument('--include', nargs='+', default=['torchscript', 'onnx'], choices=FORMATS)
    parser.add_argument('--imgsz', '--img', '--img-size', nargs='+', type=int, default=[640], help='image size h (w)')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--device', default='cpu', help="'cpu' or a CUDA index such as 0")
    parser.add_argument('--opset', type=int, default=12, help='ONNX opset')
    parser.add_argument('--dynamic', action='store_true', help='ONNX/OpenVINO: any batch size and image size')
    parser.add_argument('--simplify', action='store_true', help='ONNX: simplify the graph with onnxslim')
    parser.add_argument('--half', action='store_true', help='FP16 export (CUDA only; tflite: FP16 weights, any device)')
    return parser.parse_args(argv)


def main(argv=None):
    run_cli(run, parse_args(argv))


if __name__ == '__main__':
    main()
