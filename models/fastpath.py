"""A faster forward for frozen layers: computation-only shortcuts that never touch parameters, buffers or state_dict.

    model.set_frozen_fast_path()                      # utils/freeze/plan.py's freeze() calls this
    model.set_frozen_fast_path(channels_last=False)   # each idea can be switched off (benchmarks/freeze.py)
    model.set_frozen_fast_path(None)                  # back to the plain forward

The ideas, each measured in ``benchmarks/freeze.py --fast-path`` (docs/performance.md):

- ``fold``: a Conv (or BottleneckCSP) whose weights are frozen and whose BatchNorm is in eval mode runs as one
  convolution with BN folded into it. The folded copies are plain attributes (never in ``state_dict``), are
  recomputed when a source tensor changes (in-place update, ``load_state_dict``, ``.to()``, ``.half()``) and are
  unused, and dropped, as soon as a source tensor needs a gradient again or the BatchNorm trains (unfreezing).
- ``no_grad``: the leading layers that need no gradient (frozen parameters, inputs from the image or other such
  layers) run under ``torch.no_grad``, so autograd records nothing for them.
- ``channels_last``: on CPU those leading layers run in NHWC memory order (oneDNN's faster convolutions); in
  training the trainable layers after them stay in NHWC (oneDNN's convolution backward is faster there too), while
  inference hands Detect contiguous maps, as the exports compute them.
"""
import contextlib

import torch
import torch.nn.functional as F


class FastPathOptions:
    """Which ideas are on, and the gradient-free prefix they apply to (``cut``: its length in layers).

    ``cut`` is re-derived whenever the prefix may have changed: a parameter in it needs a gradient again.
    """

    def __init__(self, fold=True, no_grad=True, channels_last=True):
        self.fold, self.no_grad, self.channels_last = fold, no_grad, channels_last
        self.cut, self.prefix_params = 0, []

    def __deepcopy__(self, memo):  # a copied model (EMA) derives its own prefix
        return FastPathOptions(self.fold, self.no_grad, self.channels_last)

    def refresh(self, model):
        """Length of the leading run of layers that need no gradient, and their parameters (for checks)."""
        cut, params = 0, []
        for layer in model.model:  # a layer reads only earlier layers (or the image), all gradient-free so far
            own = list(layer.parameters())
            if any(p.requires_grad for p in own):
                break
            params += own
            cut += 1
        self.cut = min(cut, len(model.model) - 1)  # Detect always runs as usual (train/eval outputs differ)
        self.prefix_params = params
        return self.cut

    def checked_cut(self, model, x):
        """The prefix length now: 0 when the input needs a gradient; re-derived when a prefix parameter does."""
        if x.requires_grad:
            return 0
        if not self.prefix_params or any(p.requires_grad for p in self.prefix_params):
            self.refresh(model)
        return self.cut


def set_frozen_fast_path(model, options):
    """Install (``options`` a FastPathOptions) or remove (None) the fast path on ``model`` and its blocks."""
    model.fast_path = options
    for m in model.modules():
        if hasattr(m, 'fold'):
            m.fold = FoldedWeights() if options is not None and options.fold else None
    if options is not None:
        options.refresh(model)


def runs_nhwc(options, x):
    """Whether the fast path (``options``, or None) runs input ``x`` in channels_last order: on CPU, when asked."""
    return options is not None and options.channels_last and x.device.type == 'cpu'


def forward(model, x, options):
    """Model forward with the gradient-free prefix run under no_grad (and channels_last on CPU)."""
    cut = options.checked_cut(model, x)
    y = []
    if not cut:
        return model.run_layers(0, x, y)
    nhwc = runs_nhwc(options, x)
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad() if options.no_grad else contextlib.nullcontext():
        x = model.run_layers(0, x, y, stop=cut)
    if nhwc and not model.training:  # inference: Detect reads contiguous maps, as the exports compute them
        last = len(model.model) - 1
        x = model.run_layers(cut, x, y, stop=last)
        f = model.model[last].f
        read = set(f) if isinstance(f, (list, tuple)) else {f}
        y = [_contiguous(t) if i in read else t for i, t in enumerate(y)]  # only the maps Detect reads
        return model.run_layers(last, _contiguous(x) if -1 in read else x, y)
    return model.run_layers(cut, x, y)  # the rest in NHWC too (in training: oneDNN's faster backward)


def _contiguous(t):
    return t.contiguous() if isinstance(t, torch.Tensor) else t


class FoldedWeights:
    """Cache of one block's BN-folded convolution weights, keyed by the identity and version of their sources.

    Not a tensor attribute of any module, so never saved; copying a model (EMA) gives the copy an empty cache.
    """

    def __init__(self):
        self.key, self.tensors = None, None

    def __deepcopy__(self, memo):
        return FoldedWeights()

    def clear(self):
        self.key, self.tensors = None, None

    def get(self, sources, bn, compute, nhwc):
        """Folded tensors from ``compute()``, cached; None (cache dropped) unless ``sources`` are all frozen and
        ``bn`` is in eval mode."""
        if bn.training or any(t.requires_grad for t in sources):
            self.clear()
            return None
        # tensors made under inference_mode cannot enter autograd later: the mode is part of the key
        key = (nhwc, torch.is_inference_mode_enabled(),
               *((t.data_ptr(), t._version, t.dtype, t.device) for t in sources))
        if key != self.key:
            with torch.no_grad():
                tensors = compute()
            if nhwc:
                tensors = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in tensors]
            self.key, self.tensors = key, tensors
        return self.tensors


def bn_scale_shift(bn):
    """(scale, shift) with bn(z) == z * scale + shift for a BatchNorm in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fold_conv_bn(conv, bn):
    """[weight, bias] of one convolution equal to ``bn(conv(z))`` (BN in eval mode)."""
    scale, shift = bn_scale_shift(bn)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return [conv.weight * scale.view(-1, 1, 1, 1), bias]


def is_nhwc(x):
    """Whether a CPU activation is laid out channels_last (then the folded weights are stored the same way)."""
    return x.device.type == 'cpu' and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def conv_bn_sources(conv, bn):
    return (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var) + (
        (conv.bias,) if conv.bias is not None else ())


def folded_conv(block, x):
    """``block.bn(block.conv(x))`` as one convolution when frozen (Conv blocks), else None."""
    conv, bn = block.conv, block.bn
    wb = block.fold.get(conv_bn_sources(conv, bn), bn, lambda: fold_conv_bn(conv, bn), is_nhwc(x))
    if wb is None:
        return None
    return F.conv2d(x, wb[0], wb[1], conv.stride, conv.padding, conv.dilation, conv.groups)


def fold_csp(block):
    """BottleneckCSP's BatchNorm over cat(cv3, cv2) split into its two halves and folded into cv3 and cv2."""
    scale, shift = bn_scale_shift(block.bn)
    c = block.cv3.out_channels
    return [block.cv3.weight * scale[:c].view(-1, 1, 1, 1), shift[:c],
            block.cv2.weight * scale[c:].view(-1, 1, 1, 1), shift[c:]]


def folded_csp_tail(block, x, hidden):
    """``block.bn(cat(block.cv3(hidden), block.cv2(x)))`` with BN folded in when frozen, else None."""
    bn = block.bn
    sources = (block.cv3.weight, block.cv2.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    wb = block.fold.get(sources, bn, lambda: fold_csp(block), is_nhwc(x))
    if wb is None:
        return None
    return torch.cat((F.conv2d(hidden, wb[0], wb[1]), F.conv2d(x, wb[2], wb[3])), 1)
