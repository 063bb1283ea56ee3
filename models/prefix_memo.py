"""Validation during a frozen fine-tune reuses what the frozen layers computed: ``PrefixMemo``.

With ``--freeze`` the EMA model's leading frozen layers (weights and BatchNorm statistics) are the same in every
epoch, and so are the val images, so those layers' outputs are the same too. A model given a memo
(``model.prefix_memo = PrefixMemo(cut)``; the trainer does it, ``PrefixMemo.for_frozen``) keeps the outputs of
layers 0..cut-1 per input batch, up to a byte budget, and later evaluations of that batch start at layer ``cut``.

Exact by construction: an entry is used only for a byte-identical input (shape, dtype, layout and a BLAKE2b
digest of its bytes) while every floating-point tensor of those layers is the one it was computed from (identity
and in-place version counter, as models/fastpath.py keys its folded weights); any change empties the memo. It
acts only in eval mode without autograd (validation), and only on CPU: on a GPU the input would have to be copied
to the host to be hashed, and the frozen layers are cheap there.
"""
import hashlib

import torch

DEFAULT_BUDGET = 1 << 30  # bytes of kept outputs (64 images at 320 px through a v6 yolov5n backbone: about 46 MB)


def batch_key(x):
    """What identifies an input batch: shape, dtype, memory layout and a digest of its bytes in memory order."""
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    data = x.permute(0, 2, 3, 1) if nhwc else x.contiguous()
    digest = hashlib.blake2b(memoryview(data.numpy()).cast('B'), digest_size=16).digest()
    return tuple(x.shape), x.dtype, nhwc, digest


def nbytes(tensors):
    """Bytes held by ``tensors`` (None entries and repeated tensors counted once)."""
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)}
    return sum(seen.values())


def frozen_prefix_len(model):
    """Leading layers of ``model`` (a training Model) with no trainable parameter and every BatchNorm kept in eval
    mode (``model.frozen_bn``): the layers whose outputs do not change while training. Detect never counts."""
    bn_types = (torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm)
    cut = 0
    for i, layer in enumerate(model.model[:-1]):
        params_frozen = not any(p.requires_grad for p in layer.parameters())
        bns = [f'model.{i}.{n}' if n else f'model.{i}' for n, m in layer.named_modules() if isinstance(m, bn_types)]
        if not params_frozen or any(name not in model.frozen_bn for name in bns):
            break
        cut += 1
    return cut


class PrefixMemo:
    """Outputs of layers 0..``cut``-1 per input batch (see the module docstring); ``hits``/``misses`` count uses."""

    def __init__(self, cut, budget=DEFAULT_BUDGET):
        self.cut, self.budget = cut, budget
        self.entries, self.used, self.sources = {}, 0, None
        self.hits = self.misses = 0

    @classmethod
    def for_frozen(cls, model, device, budget=DEFAULT_BUDGET):
        """A memo for the EMA of ``model`` (the model being trained), or None: no frozen prefix, or not on CPU."""
        cut = frozen_prefix_len(model)
        return cls(cut, budget) if cut and torch.device(device).type == 'cpu' else None

    def __deepcopy__(self, memo):  # a copied model starts with an empty memo of its own
        return PrefixMemo(self.cut, self.budget)

    def applies(self, model, x, start, stop):
        return (start == 0 and (stop is None or stop >= self.cut) and x.device.type == 'cpu' and not model.training
                and not torch.is_grad_enabled())

    def sources_key(self, layers):
        return tuple((t.data_ptr(), t._version) for m in layers[:self.cut] for t in (*m.parameters(), *m.buffers())
                     if t.is_floating_point())

    def run(self, run_layers, layers, x, y):
        """``x`` after layers 0..cut-1, with ``y`` extended by their kept outputs: remembered, or computed by
        ``run_layers(x, y, stop)`` and remembered while the budget lasts."""
        sources = self.sources_key(layers)
        if sources != self.sources:
            self.entries, self.used, self.sources = {}, 0, sources
        key = batch_key(x)
        if key in self.entries:
            self.hits += 1
            out, saved = self.entries[key]
            y.extend(saved)
            return out
        self.misses += 1
        n = len(y)
        out = run_layers(x, y, self.cut)
        size = nbytes([out, *y[n:]])
        if self.used + size <= self.budget:
            self.entries[key] = out, tuple(y[n:])
            self.used += size
        return out
