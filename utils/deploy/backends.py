"""One model-loading room: any weights file becomes a ``Backend`` that maps a letterboxed batch to predictions.

    backend = load_backend('best.onnx', device)  # .pt (ours or official), .torchscript, .onnx, .tflite, OpenVINO folder
    pred = backend(x)        # x (b, 3, h, w) float in [0, 1] -> (b, n, 5 + nc) float32: xywh pixels, obj, classes
    backend.names, backend.stride, backend.imgsz     # imgsz: (h, w) fixed at export, or None (any stride multiple)

Exports carry their metadata (see ``export_metadata``): TorchScript in the ``config.txt`` extra file, ONNX in
``metadata_props``, OpenVINO in ``metadata.yaml`` beside the ``.xml``, TFLite in a ``metadata.json`` zip entry appended
to the ``.tflite``. A fixed input batch is handled here: larger
batches are split, a short one is padded. Runtimes are imported lazily (``utils/optional.py``).
"""
import ast
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml

from utils.optional import require
from utils.deploy.signal_stack import keep_signal_stack
from utils.errors import InputError

TFLITE_METADATA = 'metadata.json'  # the zip entry export.py appends to a .tflite file (the interpreter ignores it)
FORMATS = {'.pt': 'PyTorch', '.torchscript': 'TorchScript', '.onnx': 'ONNX', '.xml': 'OpenVINO', '.tflite': 'TFLite'}


def export_metadata(names, stride, shape, dynamic=False, half=False, kept_nc=None):
    """What every export carries: class names, stride, input shape (and 'shape' as upstream's TorchScript has);
    for a kept model (``--keep-classes``) ``kept_nc``, how many of the first names its checkpoint predicts."""
    b, _, h, w = (int(s) for s in shape)
    return {'stride': int(stride), 'names': list(names), 'imgsz': [h, w], 'batch': b, 'dynamic': bool(dynamic),
            'half': bool(half), 'shape': [b, 3, h, w], **({'kept_nc': int(kept_nc)} if kept_nc else {})}


def _parse_value(value):
    """A metadata value: ours are JSON; upstream YOLOv5 wrote Python literals such as "{0: 'person'}"."""
    if isinstance(value, bytes):
        value = value.decode('utf-8', errors='replace')
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        try:
            return ast.literal_eval(value)  # literals only: never evaluates code
        except (ValueError, SyntaxError):
            return value


def read_metadata(raw, source, nc=None):
    """Names (list), stride, and the shape keys from an export's metadata mapping; names fall back to ids."""
    meta = {k: _parse_value(v) for k, v in (raw or {}).items()}
    names = meta.get('names')
    if isinstance(names, dict):  # {0: 'person', ...}
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, (list, tuple)) or (nc is not None and len(names) != nc):
        if nc is None:
            raise InputError(f'{source}: its metadata has no class names (export it with export.py)')
        print(f'note: {source} carries no class names for its {nc} classes; using their ids')
        names = [str(i) for i in range(nc)]
    meta['names'] = [str(n) for n in names]
    meta['stride'] = int(meta.get('stride') or 32)
    return meta


class Backend:
    """Base class. Subclasses implement ``forward`` for a batch of the right shape (and dtype handling)."""

    format = 'PyTorch'

    def __init__(self, path, names, stride, imgsz=None, batch=None, fp16=False, device=torch.device('cpu')):
        self.path, self.names, self.stride = Path(path), list(names), int(stride)
        self.imgsz = tuple(int(s) for s in imgsz) if imgsz else None  # (h, w) when fixed at export
        self.batch = int(batch) if batch else None  # fixed batch size, or None
        self.fp16, self.device = bool(fp16), device
        self.kept_nc = None  # a kept model (--keep-classes): its first kept_nc classes are the checkpoint's

    @property
    def nc(self):
        return len(self.names)

    @property
    def dynamic(self):
        """True when any stride-multiple image size is accepted."""
        return self.imgsz is None

    def __repr__(self):
        shape = 'any size' if self.dynamic else f'{self.imgsz[0]}x{self.imgsz[1]}'
        return f'{self.format} model {self.path.name} ({self.nc} classes, stride {self.stride}, {shape})'

    def check_input(self, x):
        h, w = x.shape[2:]
        if h % self.stride or w % self.stride:
            raise InputError(f'{self.path}: image size {h}x{w} is not a multiple of the stride {self.stride}')
        if self.imgsz is not None and (h > self.imgsz[0] or w > self.imgsz[1]):
            raise InputError(f'{self.path}: takes {self.imgsz[0]}x{self.imgsz[1]} images (fixed at export), got '
                             f'{h}x{w}; re-export with --dynamic or use --imgsz {max(self.imgsz)}')

    def embed(self, x):
        """A batch smaller than the fixed export size, placed on a grey canvas of that size at a stride-aligned
        offset, so that its grid cells fall on the image as they would without the canvas.
        Returns (canvas, (dx, dy)); predictions on the canvas are shifted back by that offset."""
        (ch, cw), (h, w) = self.imgsz, x.shape[2:]
        dy, dx = (ch - h) // 2 // self.stride * self.stride, (cw - w) // 2 // self.stride * self.stride
        canvas = x.new_full((x.shape[0], 3, ch, cw), 114 / 255)  # the letterbox colour
        canvas[:, :, dy:dy + h, dx:dx + w] = x
        return canvas, (dx, dy)

    def __call__(self, x):
        """(b, 3, h, w) float in [0, 1] -> (b, n, 5 + nc) float32 decoded predictions, on ``x``'s device.

        Fixed-size exports also take smaller stride-multiple inputs (see ``embed``) and any batch size."""
        self.check_input(x)
        offset = (0, 0)
        if self.imgsz is not None and tuple(x.shape[2:]) != self.imgsz:
            x, offset = self.embed(x)
        if self.batch is None or x.shape[0] == self.batch:
            out = self.forward(x).float().to(x.device)
        else:
            outs = []
            for chunk in x.split(self.batch):
                n = chunk.shape[0]
                if n < self.batch:  # the fixed batch: pad with blank images, drop their rows after
                    chunk = torch.cat((chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))))
                outs.append(self.forward(chunk)[:n].float().to(x.device))
            out = torch.cat(outs)
        if offset != (0, 0):  # back to the input's pixels (out of place: outputs may be inference tensors)
            out = torch.cat((out[..., :2] - out.new_tensor(offset), out[..., 2:]), -1)
        return out

    def forward(self, x):
        raise NotImplementedError

    def warmup(self, imgsz=None):
        """One blank forward pass, so that start-up costs are not counted in the first image's time."""
        h, w = self.imgsz or imgsz or (self.stride * 2, self.stride * 2)
        self(torch.zeros(self.batch or 1, 3, h, w, device=self.device))


class PyTorchBackend(Backend):
    """Our checkpoints and official YOLOv5 .pt files (``utils/checkpoint.load_model``), fused for inference."""

    def __init__(self, path, device, fp16=False, model=None):
        """``model``: an already built ``Model`` to run (fused here) instead of loading ``path``."""
        from utils.weights.checkpoint import load_model  # lazy: rooms below models/ are not needed for exports
        with torch.no_grad():  # fusing copies BN-scaled weights; without this they would carry autograd history
            model = load_model(path, device, fuse=True) if model is None else model.to(device).fuse().eval()
        fp16 = fp16 and device.type == 'cuda'
        self.model = model.half() if fp16 else model
        super().__init__(path, model.names, int(model.stride.max()), fp16=fp16, device=device)
        self.kept_nc = getattr(model, 'kept_nc', None)

    def forward(self, x):
        with torch.inference_mode():
            return self.model(x.half() if self.fp16 else x.float())[0]


class TorchScriptBackend(Backend):
    format = 'TorchScript'

    def __init__(self, path, device, fp16=False):
        extra = {'config.txt': ''}
        try:
            with warnings.catch_warnings():  # torch announces the deprecation of TorchScript on every load
                warnings.simplefilter('ignore', FutureWarning)
                self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except (RuntimeError, ValueError) as e:
            raise InputError(f'{path}: not a TorchScript model ({str(e).strip().splitlines()[0][:160]})') from None
        raw = _parse_value(extra['config.txt'] or '{}')
        meta = read_metadata(raw if isinstance(raw, dict) else {}, path)
        shape = meta.get('shape') or [None] * 4
        imgsz = None if meta.get('dynamic') else meta.get('imgsz') or shape[2:]  # upstream's traces: fixed grids
        imgsz = imgsz if imgsz and all(imgsz) else None
        super().__init__(path, meta['names'], meta['stride'], imgsz, fp16=bool(meta.get('half')), device=device)
        self.kept_nc = meta.get('kept_nc')

    def forward(self, x):
        with torch.inference_mode():
            out = self.module(x.half() if self.fp16 else x.float())
        return out[0] if isinstance(out, (list, tuple)) else out


def _fixed_dims(dims):
    """(batch, (h, w)) from an input shape whose symbolic dimensions are strings or None."""
    def fixed(d):
        return d if isinstance(d, int) and d > 0 else None
    b, h, w = fixed(dims[0]), fixed(dims[2]), fixed(dims[3])
    return b, ((h, w) if h and w else None)


class OnnxBackend(Backend):
    format = 'ONNX'

    def __init__(self, path, device, fp16=False):
        ort = require('onnxruntime', feature=f'running {Path(path).name}')
        cuda = device.type == 'cuda' and 'CUDAExecutionProvider' in ort.get_available_providers()
        if device.type == 'cuda' and not cuda:
            print(f'note: this onnxruntime has no CUDA provider; {Path(path).name} runs on the CPU '
                  f'(pip install onnxruntime-gpu)')
        providers = (['CUDAExecutionProvider'] if cuda else []) + ['CPUExecutionProvider']
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f'{path}: not a readable ONNX model ({str(e).strip().splitlines()[0][:160]})') from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.input_dtype = inp.name, np.float16 if 'float16' in inp.type else np.float32
        nc = out.shape[-1] - 5 if isinstance(out.shape[-1], int) else None
        meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, path, nc)
        batch, imgsz = _fixed_dims(inp.shape)
        super().__init__(path, meta['names'], meta['stride'], imgsz, batch, self.input_dtype == np.float16,
                         torch.device('cuda', device.index or 0) if cuda else torch.device('cpu'))
        self.kept_nc = meta.get('kept_nc')

    def forward(self, x):
        im = x.detach().cpu().numpy().astype(self.input_dtype, copy=False)
        return torch.from_numpy(self.session.run(None, {self.input_name: im})[0])


def openvino_files(path):
    """(model .xml, metadata.yaml) of an OpenVINO export given as its folder or its .xml file."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob('*.xml'))
        if len(xmls) != 1:
            raise InputError(f'{path}: an OpenVINO export folder holds one .xml model; found {len(xmls)}')
        path = xmls[0]
    return path, path.parent / 'metadata.yaml'


class OpenVinoBackend(Backend):
    format = 'OpenVINO'

    def __init__(self, path, device, fp16=False):
        ov = require('openvino', feature=f'running {Path(path).name}')
        xml, meta_file = openvino_files(path)
        if device.type == 'cuda':
            print(f'note: OpenVINO runs on the CPU here; {Path(path).name} ignores --device {device}')
        core = ov.Core()
        try:
            model = core.read_model(str(xml))
        except RuntimeError as e:
            raise InputError(f'{xml}: not a readable OpenVINO model ({str(e).strip().splitlines()[0][:160]})') \
                from None
        raw = yaml.safe_load(meta_file.read_text()) if meta_file.is_file() else {}
        out_dim = model.outputs[0].get_partial_shape()[-1]
        meta = read_metadata(raw, path, out_dim.get_length() - 5 if out_dim.is_static else None)
        shape = model.inputs[0].get_partial_shape()
        batch, imgsz = _fixed_dims([d.get_length() if d.is_static else None for d in shape])
        # f32: the CPU plugin otherwise picks bf16 where the CPU has it, which moves boxes by pixels
        with keep_signal_stack():  # the plugin's own stack could outlive it: see utils/deploy/signal_stack.py
            compiled = core.compile_model(model, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})
        self.request = compiled.create_infer_request()
        super().__init__(path, meta['names'], meta['stride'], imgsz, batch, device=torch.device('cpu'))
        self.kept_nc = meta.get('kept_nc')

    def forward(self, x):
        # copied in and out: a zero-copy input (CompiledModel.__call__'s default) stays in the request after the
        # call, a view of a tensor the caller may free
        out = self.request.infer(x.detach().cpu().float().numpy(), share_inputs=False, share_outputs=False)
        return torch.from_numpy(out[0])


class TfliteBackend(Backend):
    """A .tflite export run by the LiteRT interpreter (``ai-edge-litert``) on the CPU. Its input is channels-last."""

    format = 'TFLite'

    def __init__(self, path, device, fp16=False):
        litert = require('ai_edge_litert.interpreter', 'ai-edge-litert', feature=f'running {Path(path).name}')
        if device.type == 'cuda':
            print(f'note: LiteRT runs on the CPU here; {Path(path).name} ignores --device {device}')
        try:
            self.interpreter = litert.Interpreter(model_path=str(path))
        except ValueError as e:
            raise InputError(f'{path}: not a readable TFLite model ({str(e).strip().splitlines()[0][:160]})') from None
        self.interpreter.allocate_tensors()
        inp, out = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        self.input_index, self.output_index = inp['index'], out['index']
        meta = read_metadata(tflite_metadata(path), path, int(out['shape'][-1]) - 5)
        b, h, w, _ = (int(d) for d in inp['shape'])  # channels-last
        super().__init__(path, meta['names'], meta['stride'], (h, w), b, device=torch.device('cpu'))
        self.kept_nc = meta.get('kept_nc')

    def forward(self, x):
        self.interpreter.set_tensor(self.input_index, x.detach().cpu().float().permute(0, 2, 3, 1).numpy())
        self.interpreter.invoke()
        return torch.from_numpy(self.interpreter.get_tensor(self.output_index).copy())  # the interpreter reuses it


def tflite_metadata(path):
    """The metadata mapping that export.py appends to a .tflite file as a zip entry; {} when it has none."""
    if not zipfile.is_zipfile(path):
        return {}
    with zipfile.ZipFile(path) as zf:
        if TFLITE_METADATA not in zf.namelist():
            return {}
        raw = _parse_value(zf.read(TFLITE_METADATA))
    return raw if isinstance(raw, dict) else {}


def model_format(path):
    """'PyTorch', 'TorchScript', 'ONNX', 'OpenVINO' or 'TFLite' from the path (OpenVINO: a folder or .xml)."""
    path = Path(path)
    if path.is_dir():
        return 'OpenVINO'
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown model format '{path.suffix}' (expected .pt, .torchscript, .onnx, "
                         f'.tflite, or an OpenVINO export folder)')
    return fmt


def load_backend(weights, device='cpu', fp16=False):
    """Any weights file (or OpenVINO folder) -> a ``Backend``. Official .pt names are fetched as detect.py does.

    ``fp16`` runs .pt models in half precision on CUDA; exports run in the precision they were exported in.
    """
    from utils.weights.official import resolve_weights
    device = torch.device(device) if isinstance(device, str) else device
    path = Path(weights)
    if not path.exists():
        path = resolve_weights(path)  # an official name is downloaded; anything else: one-line FileNotFoundError
    fmt = model_format(path)
    cls = {'PyTorch': PyTorchBackend, 'TorchScript': TorchScriptBackend, 'ONNX': OnnxBackend,
           'OpenVINO': OpenVinoBackend, 'TFLite': TfliteBackend}[fmt]
    return cls(path, device, fp16)
