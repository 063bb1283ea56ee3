"""YOLOv5 model built from a YAML description.

Usage:
    python models/yolo.py --cfg yolov5s.yaml          # print the layer table
    python models/yolo.py --cfg v6/yolov5s.yaml --nc 20
    python models/yolo.py --cfg v6/yolov5s6.yaml --imgsz 1280  # P6: four levels, strides 8-64
"""
import argparse
import itertools
import math
import sys
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn as nn

if __package__ in (None, ''):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import fastpath, probe  # noqa: E402
from models.common import C3, SPP, SPPF, Bottleneck, BottleneckCSP, Concat, Conv, Focus  # noqa: E402
from models.probe import PROBE_SIZE, check_from, check_header, check_param_count, check_repeats  # noqa: E402
from utils.safe_yaml import load_yaml_file  # noqa: E402
from utils.errors import InputError

MODELS_DIR = Path(__file__).resolve().parent


class Detect(nn.Module):
    """Detection head: a 1x1 conv per level, decoded to boxes in eval mode.

    ``anchors`` is a buffer of shape (nl, na, 2) in grid units (``Model`` divides the pixel anchors by the
    strides). Releases up to v5 also stored the pixel anchors as an ``anchor_grid`` buffer; pass
    ``anchor_grid_buffer=True`` to keep that key so their state_dicts load unchanged.

    ``class_rows`` (one count per class, e.g. ``[1, 8, 10]``) gives a class several output rows, for a class
    transferred from several checkpoint classes (``utils/weights/checkpoint.py``): the convs then have ``5 + sum(rows)``
    outputs per anchor and a fixed rule ``class_reduce`` folds a class's rows into one logit, before the loss
    and the decode, so every consumer still sees ``5 + nc`` outputs per anchor.
    """

    def __init__(self, nc=80, anchors=(), ch=(), anchor_grid_buffer=False, class_rows=None, class_reduce='max'):
        super().__init__()
        self.nc = nc  # number of classes
        self.no = nc + 5  # outputs per anchor: box(4) + objectness(1) + classes
        self.nl = len(anchors)  # number of detection levels
        self.na = len(anchors[0]) // 2  # anchors per level
        self.class_rows = check_class_rows(class_rows, nc, class_reduce)  # None: one row per class
        self.class_reduce = class_reduce
        self.nr = sum(self.class_rows) if self.class_rows else nc  # class rows in each conv, per anchor
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer('anchors', a)
        if anchor_grid_buffer:
            self.register_buffer('anchor_grid', a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.register_buffer('stride', torch.ones(self.nl), persistent=False)  # set by Model
        self.m = nn.ModuleList(nn.Conv2d(x, (self.nr + 5) * self.na, 1) for x in ch)

    def forward(self, x):
        """Training: list of raw maps (B, na, ny, nx, no). Eval: (decoded (B, N, no), raw maps)."""
        x = self.raw_maps(x)
        if self.training:
            return x
        if not plain_inference():
            return torch.cat([self.decode(p, i).view(p.shape[0], -1, self.no) for i, p in enumerate(x)], 1), x
        return self.decode_into(x), x

    def raw_maps(self, x):
        """The level inputs ``x`` (a list, overwritten) -> raw maps (B, na, ny, nx, no), class rows folded."""
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.nr + 5, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.class_rows:
                x[i] = self.reduce_class_rows(x[i])
        return x

    def reduce_class_rows(self, p):
        """(..., 5 + sum(class_rows)) -> (..., 5 + nc): each class's rows folded into one logit.

        'max': the largest member logit (the class scores like its most confident member). 'noisy_or': the
        logit of 1 - prod(1 - p_member), i.e. log(expm1(sum(softplus(z)))).
        """
        parts = list(p.split([5, *self.class_rows], -1))
        for k, rows in enumerate(self.class_rows, 1):
            if rows > 1 and self.class_reduce == 'max':
                parts[k] = parts[k].amax(-1, keepdim=True)
            elif rows > 1:
                s = nn.functional.softplus(parts[k].float()).sum(-1, keepdim=True).clamp_min(1e-30)
                parts[k] = (s + torch.log(-torch.expm1(-s))).to(p.dtype)  # log(e^s - 1), stable for large s
        return torch.cat(parts, -1)

    def decode(self, p, i):
        """Raw level-i map -> (xywh in input pixels, objectness, class scores), all after sigmoid."""
        y = p.sigmoid()
        xy, wh = self.decode_boxes(y, i)
        return torch.cat((xy, wh, y[..., 4:]), -1)

    def decode_boxes(self, y, i):
        """(xy, wh) in input pixels from the level-i map ``y`` after sigmoid."""
        _, _, ny, nx, _ = y.shape
        yv, xv = torch.meshgrid(torch.arange(ny, device=y.device), torch.arange(nx, device=y.device), indexing='ij')
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).to(y.dtype)
        anchor_wh = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).to(y.dtype)  # pixels
        wh = y[..., 2:4] * 2
        return (y[..., 0:2] * 2 - 0.5 + grid) * self.stride[i], wh * wh * anchor_wh  # wh * wh: LiteRT has no pow

    def decode_into(self, maps, out=None, first=0, columns=None):
        """``decode`` of every level written into one (B, N, no) tensor: the same numbers, one level's copy at a
        time instead of all of them and their concatenation (inference only: it writes over the sigmoid's output).

        With ``out`` (B, >= first + N, 5 + C), rows ``first``.. of ``out`` get them instead: box and objectness in
        columns 0-4, the class scores in ``columns`` (a slice or an index tensor; default 5..no-1); the caller
        fills the other columns (models/keep.py)."""
        bs = maps[0].shape[0]
        if out is None:
            out = maps[0].new_empty(bs, sum(p[0].numel() // self.no for p in maps), self.no)
        cols = slice(5, self.no) if columns is None else columns
        start = first
        for i, p in enumerate(maps):
            n = p[0].numel() // self.no
            y = p.sigmoid()  # on the contiguous map, so the same kernel (and rounding) as ``decode``
            y[..., 0:2], y[..., 2:4] = self.decode_boxes(y, i)
            y = y.view(bs, n, self.no)
            if isinstance(cols, slice) and cols == slice(5, self.no):  # one block copy
                out[:, start:start + n, :self.no] = y
            else:
                out[:, start:start + n, :5] = y[..., :5]
                out[:, start:start + n, cols] = y[..., 5:]
            start += n
        return out


def plain_inference():
    """Whether a forward may take inference-only shortcuts (in-place writes into preallocated outputs): no
    autograd, no tracing (TorchScript/ONNX export), no torch.compile."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling())


CLASS_REDUCTIONS = ('max', 'noisy_or')


def check_class_rows(class_rows, nc, class_reduce):
    """``class_rows`` as a tuple, or None when every class has one row; ValueError when it cannot fit ``nc``."""
    if class_reduce not in CLASS_REDUCTIONS:
        raise InputError(f"class_reduce '{class_reduce}': expected one of {', '.join(CLASS_REDUCTIONS)}")
    if not class_rows:
        return None
    rows = tuple(class_rows)
    if len(rows) != nc or not all(isinstance(r, int) and r >= 1 for r in rows):
        raise InputError(f'class_rows {list(rows)}: expected {nc} positive integers (one per class)')
    return rows if any(r > 1 for r in rows) else None


# YAML module names -> classes. An explicit table: nothing in a YAML is ever evaluated as code.
MODULES = {
    'Conv': Conv, 'Focus': Focus, 'Bottleneck': Bottleneck, 'BottleneckCSP': BottleneckCSP, 'C3': C3,
    'SPP': SPP, 'SPPF': SPPF, 'Concat': Concat, 'Detect': Detect,
    'nn.Upsample': nn.Upsample, 'Upsample': nn.Upsample, 'nn.BatchNorm2d': nn.BatchNorm2d,
}
CHANNEL_BLOCKS = (Conv, Focus, Bottleneck, BottleneckCSP, C3, SPP, SPPF)  # args start with c_out
REPEAT_BLOCKS = (BottleneckCSP, C3)  # take the repeat count as an argument


def make_divisible(x, divisor=8):
    return math.ceil(x / divisor) * divisor


def load_yaml_cfg(cfg):
    """Read a model YAML: a path, or a name under models/ (``yolov5s.yaml``, ``v6/yolov5n.yaml``)."""
    path = Path(cfg)
    if not path.is_file() and (MODELS_DIR / path).is_file():
        path = MODELS_DIR / path
    if not path.is_file():
        raise FileNotFoundError(f'{cfg}: model YAML not found (looked here and in {MODELS_DIR})')
    d = load_yaml_file(path, 'model YAML')
    missing = [k for k in ('nc', 'depth_multiple', 'width_multiple', 'anchors', 'backbone', 'head')
               if not isinstance(d, dict) or k not in d]
    if missing:
        raise InputError(f'{path}: model YAML lacks {", ".join(missing)}')
    d['yaml_file'] = path.name
    return d


def parse_model(d, ch):
    """Build the layer list from a model dict. Returns (nn.Sequential of layers, sorted indices to keep).

    Any malformed row raises a one-line ValueError naming the YAML file, the layer and the row.
    """
    check_header(d)
    layers, save, ch = [], [], list(ch)
    for i, row in enumerate(d['backbone'] + d['head']):
        try:
            f, n, name, args = row
            check_from(f, i)
            m_, c2 = build_layer(d, i, f, n, name, list(args), ch)
        except (ValueError, TypeError, IndexError, KeyError, ArithmeticError, RuntimeError) as e:  # torch: bad sizes
            raise InputError(f"{d.get('yaml_file', 'model YAML')}: layer {i} {str(row)[:200]}: {e}") from None
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


def build_layer(d, i, f, n, name, args, ch):
    """One layer (repeated ``n`` times, scaled by the depth/width multiples) and its output channels."""
    nc, gd, gw, anchors = d['nc'], d['depth_multiple'], d['width_multiple'], d['anchors']
    if name not in MODULES:
        raise InputError(f"unknown module '{name}' (known: {', '.join(sorted(MODULES))})")
    m = MODULES[name]
    names = {'nc': nc, 'anchors': anchors, 'None': None}
    args = [names.get(a, a) if isinstance(a, str) else a for a in args]
    n = max(round(n * gd), 1) if n > 1 else n  # depth gain
    check_repeats(n)
    no = len(anchors[0]) // 2 * (nc + 5)
    kwargs = {}
    if m in CHANNEL_BLOCKS:
        c1, c2 = ch[f], args[0]
        if type(c2) is not int or c2 < 1:
            raise InputError(f'output channels {c2!r:.40} must be a positive integer')
        c2 = make_divisible(c2 * gw, 8) if c2 != no else c2
        args = [c1, c2, *args[1:]]
        if m in REPEAT_BLOCKS:
            args.insert(2, n)
            n = 1
        kwargs['act'] = d.get('activation', 'SiLU')
        if m is BottleneckCSP and d.get('csp_activation'):
            kwargs['csp_act'] = d['csp_activation']
    elif m is nn.BatchNorm2d:
        args, c2 = [ch[f]], ch[f]
    elif m is Concat:
        c2 = sum(ch[x] for x in f)
    elif m is Detect:
        args.append([ch[x] for x in f])
        if isinstance(args[1], int):
            raise InputError('Detect needs explicit anchors')
        if not isinstance(f, list) or len(f) != len(args[1]):
            raise InputError(f'Detect reads {f} but the YAML has {len(args[1])} anchor levels')
        kwargs['anchor_grid_buffer'] = bool(d.get('anchor_grid_buffer', False))
        kwargs['class_rows'], kwargs['class_reduce'] = d.get('class_rows'), d.get('class_reduce', 'max')
        c2 = None
    else:
        c2 = ch[f]
    m_ = nn.Sequential(*(m(*args, **kwargs) for _ in range(n))) if n > 1 else m(*args, **kwargs)
    m_.i, m_.f, m_.type = i, f, name  # index, 'from' index, type name
    m_.np = sum(p.numel() for p in m_.parameters())
    m_.args = args[:-1] if m is Detect else args  # for the layer table
    return m_, c2


def run_layers(layers, save, x, y=None, start=0, stop=None, check=None):
    """Forward ``x`` through layers ``start``..``stop`` - 1, each reading its 'from' inputs; ``check(i, output)``
    sees each output. ``y`` holds earlier outputs (None where no later layer reads them), extended in place."""
    y = [] if y is None else y
    for m in itertools.islice(layers, start, stop):
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        if check is not None:
            check(m.i, x)
        y.append(x if m.i in save else None)
    return x


def build_checked_layers(d, ch):
    """The layers of model dict ``d`` after the checks that need them built: (layers, save, each detection
    level's grid height for a PROBE_SIZE image), or a one-line ValueError when the model would be too large
    (parameters, layer outputs), its last layer is not Detect, or its layers do not fit together.

    The layers are first built on the meta device (nothing allocated) to count parameters, then for real and
    probed with a small image (models/probe.py); the meta probe decides where that cannot.
    """
    where = d.get('yaml_file', 'model YAML')
    with torch.device('meta'):
        meta_layers, save = parse_model(d, ch=[ch])
    n_params = sum(p.numel() for p in meta_layers.parameters())
    check_param_count(n_params, where)
    if not isinstance(meta_layers[-1], Detect):
        raise InputError(f'{where}: the last layer must be Detect')
    layers = sizes = None
    if n_params <= probe.QUICK_MAX_PARAMS:
        layers = parse_model(d, ch=[ch])[0]
        sizes = probe.quick_level_sizes(layers, save, ch, run_layers, blocks=set(MODULES.values()))
    if sizes is None:
        sizes = probe.meta_level_sizes(meta_layers, save, ch, where, run_layers)
    return layers if layers is not None else parse_model(d, ch=[ch])[0], save, sizes


class Model(nn.Module):
    """YOLOv5 detection model. ``cfg`` is a YAML path/name or an already-loaded dict."""

    def __init__(self, cfg='yolov5s.yaml', ch=3, nc=None, anchors=None, class_rows=None):
        super().__init__()
        self.yaml = deepcopy(cfg) if isinstance(cfg, dict) else load_yaml_cfg(cfg)
        if nc is not None and nc != self.yaml['nc']:
            self.yaml['nc'] = int(nc)
            self.yaml.pop('class_rows', None)  # rows of the YAML's classes, not of these
        if class_rows is not None:  # several output rows for some classes (see Detect)
            self.yaml['class_rows'] = list(class_rows)
        if not self.yaml.get('class_rows'):
            self.yaml.pop('class_rows', None)
        if anchors is not None:
            self.yaml['anchors'] = anchors
        self.yaml['ch'] = ch
        self.model, self.save, level_sizes = build_checked_layers(self.yaml, ch)  # one-line errors for a bad YAML
        self.names = [str(i) for i in range(self.yaml['nc'])]
        self.frozen_bn = set()  # names of BatchNorm modules kept in eval mode (utils/freeze/plan.py)
        self.fast_path = None  # models/fastpath.py options, set by set_frozen_fast_path
        self.prefix_memo = None  # models/prefix_memo.py: frozen layers' outputs kept across validations
        self._init_strides_and_anchors(level_sizes)
        self._initialize_biases()
        self.stride = self.model[-1].stride

    @property
    def backbone_len(self):
        return len(self.yaml['backbone'])

    def forward(self, x):
        if self.fast_path is not None:
            return fastpath.forward(self, x, self.fast_path)
        return self.run_layers(0, x, [])

    def run_layers(self, start, x, y, stop=None):
        """Layers ``start``..``stop`` - 1 on ``x``; ``y`` holds earlier outputs (None where no later layer reads
        them) and is extended in place. A ``prefix_memo`` may supply the first layers' outputs."""
        memo = self.prefix_memo
        if memo is not None and memo.applies(self, x, start, stop):
            x = memo.run(lambda x0, y0, cut: run_layers(self.model, self.save, x0, y0, 0, cut), self.model, x, y)
            start = memo.cut
        return run_layers(self.model, self.save, x, y=y, start=start, stop=stop)

    def set_frozen_fast_path(self, fold=True, no_grad=True, channels_last=True):
        """Run frozen layers faster without changing any tensor the model holds (models/fastpath.py).

        ``fold``: frozen Conv+BN as one convolution; ``no_grad``: the gradient-free prefix under torch.no_grad;
        ``channels_last``: that prefix in NHWC on CPU. ``set_frozen_fast_path(None)`` turns it all off.
        """
        options = None if fold is None else fastpath.FastPathOptions(fold, no_grad, channels_last)
        fastpath.set_frozen_fast_path(self, options)
        return self

    def train(self, mode=True):
        """Like nn.Module.train, but BatchNorm layers of frozen parameters always stay in eval mode."""
        super().train(mode)
        for name, m in self.named_modules():
            if name in self.frozen_bn:
                m.eval()
        return self

    def _init_strides_and_anchors(self, level_sizes):
        m = self.model[-1]
        m.stride.copy_(torch.tensor([PROBE_SIZE / h for h in level_sizes]))
        area = m.anchors.prod(-1).mean(-1)  # mean anchor area per level
        if (area[-1] - area[0]).sign() != (m.stride[-1] - m.stride[0]).sign():
            m.anchors.copy_(m.anchors.flip(0))  # anchors listed in the opposite order to the levels
        m.anchors /= m.stride.view(-1, 1, 1)  # pixels -> grid units

    def _initialize_biases(self):
        """YOLOv5 prior: ~8 objects per 640x640 image, class probability ~0.6/nc (arXiv:1708.02002 sec 3.3)."""
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.view(m.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (m.nc - 0.99))

    def fuse(self):
        """Fold every Conv's BatchNorm into its convolution (for inference)."""
        for m in self.modules():  # every layer, including any kept copies (models/keep.py)
            if isinstance(m, Conv) and hasattr(m, 'bn'):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                delattr(m, 'bn')
                m.forward = m.forward_fuse
        return self

    def info(self, img_size=640, verbose=False):
        """One-line summary: layers, parameters, gradients, GFLOPs at ``img_size``."""
        n_p = sum(p.numel() for p in self.parameters())
        n_g = sum(p.numel() for p in self.parameters() if p.requires_grad)
        gflops = sum(layer_flops(self, img_size)) / 1e9
        s = (f"{Path(self.yaml.get('yaml_file', 'model')).stem} summary: {len(list(self.modules()))} layers, "
             f'{n_p:,} parameters, {n_g:,} gradients, {gflops:.1f} GFLOPs')
        if verbose:
            print(s)
        return s


def build_model(cfg, **kwargs):
    """``Model(cfg, **kwargs)``, or for a model dict with a ``keep`` section (``train.py --keep-classes``) the
    ``KeepModel`` that also rebuilds the checkpoint heads it keeps (models/keep.py)."""
    if isinstance(cfg, dict) and cfg.get('keep'):
        from models.keep import KeepModel  # lazy: only kept models need it
        return KeepModel(cfg, **kwargs)
    return Model(cfg, **kwargs)


@torch.no_grad()
def fuse_conv_and_bn(conv, bn):
    """A Conv2d (with bias) equal to ``bn(conv(x))`` with ``bn`` in eval mode."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).requires_grad_(False).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    b_conv = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((b_conv - bn.running_mean) * scale + bn.bias)
    return fused


def layer_flops(model, img_size=640):
    """FLOPs (2 x multiply-adds of convolutions, plus BatchNorm) of each top-level layer at ``img_size``.

    Counted on a ``s x s`` input (s = largest stride) and scaled by area, as YOLOv5 reports GFLOPs.
    """
    s = max(int(model.stride.max()), 32)
    counts = {}

    def hook(module, inp, out, idx):
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs = out.numel() * (k + (module.bias is not None))
        else:  # BatchNorm2d
            macs = 2 * out.numel()
        counts[idx] = counts.get(idx, 0) + 2 * macs

    handles = []
    for layer in model.model:
        for mod in layer.modules():
            if isinstance(mod, (nn.Conv2d, nn.BatchNorm2d)):
                handles.append(mod.register_forward_hook(lambda m, i, o, idx=layer.i: hook(m, i, o, idx)))
    was_training, fast = model.training, model.fast_path
    fastpath.set_frozen_fast_path(model, None)  # count every module as the plain forward calls it
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, model.yaml.get('ch', 3), s, s, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        fastpath.set_frozen_fast_path(model, fast)
    scale = (img_size / s) ** 2
    return [counts.get(i, 0) * scale for i in range(len(model.model))]


def layer_table(model):
    """The YOLOv5-style table: index, from, n, params, module, arguments."""
    rows = [f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<24}{'arguments':<30}"]
    for m in model.model:
        n = len(m) if isinstance(m, nn.Sequential) else 1
        rows.append(f'{m.i:>3}{str(m.f):>18}{n:>3}{m.np:10.0f}  {m.type:<24}{str(m.args):<30}')
    return '\n'.join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Build a YOLOv5 model from YAML and print its layers.')
    parser.add_argument('--cfg', default='yolov5s.yaml', help='model YAML path or name under models/')
    parser.add_argument('--nc', type=int, default=None, help='override the number of classes')
    parser.add_argument('--imgsz', type=int, default=640, help='image size for the GFLOPs figure')
    opt = parser.parse_args(argv)
    try:
        model = Model(opt.cfg, nc=opt.nc)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'error: {e}')
    print(layer_table(model))
    print(model.info(img_size=opt.imgsz))


if __name__ == '__main__':
    main()
