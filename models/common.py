"""YOLOv5 building blocks.

Every block takes its activation as a constructor argument (``act``), so one model can use SiLU, another
LeakyReLU(0.1) or Hardswish, without any class-wide default. Attribute names (``conv``, ``bn``, ``cv1``…)
follow YOLOv5 exactly, so ``state_dict`` keys match the official checkpoints.
"""
import torch
import torch.nn as nn

from models.fastpath import folded_conv, folded_csp_tail
from utils.errors import InputError

BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # YOLOv5's BatchNorm settings


def autopad(k, p=None):
    """'same' padding for odd kernels when ``p`` is None."""
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def make_activation(name='SiLU'):
    """Activation module from its YAML name: SiLU, LeakyReLU (slope 0.1), Hardswish, ReLU or Identity."""
    table = {
        'silu': lambda: nn.SiLU(inplace=True),
        'leakyrelu': lambda: nn.LeakyReLU(0.1, inplace=True),
        'hardswish': lambda: nn.Hardswish(inplace=True),
        'relu': lambda: nn.ReLU(inplace=True),
        'identity': nn.Identity,
    }
    key = str(name).replace('nn.', '').split('(')[0].lower()
    if key not in table:
        raise InputError(f"unknown activation '{name}', expected one of SiLU, LeakyReLU, Hardswish, ReLU, Identity")
    return table[key]()


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + activation. ``fold`` is the frozen fast path's cache (models/fastpath.py)."""

    fold = None

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act='SiLU'):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = make_activation(act) if isinstance(act, str) else (act or nn.Identity())

    def forward(self, x):
        if self.fold is not None:
            y = folded_conv(self, x)
            if y is not None:
                return self.act(y)
        return self.act(self.bn(self.conv(x)))

    def _apply(self, fn, *args, **kwargs):  # .to()/.half()/.cuda(): folded copies are stale
        if self.fold is not None:
            self.fold.clear()
        return super()._apply(fn, *args, **kwargs)

    def forward_fuse(self, x):
        """Forward once BN has been folded into ``conv`` (see ``Model.fuse``)."""
        return self.act(self.conv(x))


class Focus(nn.Module):
    """Space-to-depth (each 2x2 pixel block into channels), then a Conv."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act='SiLU'):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act)

    def forward(self, x):  # x(b,c,h,w) -> y(b,4c,h/2,w/2)
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv, with a residual when shapes allow."""

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5, act='SiLU'):
        super().__init__()
        c_ = int(c2 * e)  # hidden channels
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c_, c2, 3, 1, g=g, act=act)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """CSP bottleneck (https://github.com/WongKinYiu/CrossStagePartialNetworks), as YOLOv5 v1-v5 use it.

    ``csp_act`` is the activation after the concatenation's BatchNorm: LeakyReLU(0.1) in releases v1-v3 (whose
    Convs used LeakyReLU/Hardswish), SiLU from v4 on. It defaults to ``act``. ``fold`` is the frozen fast path's
    cache for ``bn`` folded into ``cv3`` and ``cv2`` (models/fastpath.py).
    """

    fold = None

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5, act='SiLU', csp_act=None):
        super().__init__()
        c_ = int(c2 * e)  # hidden channels
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1, act=act)
        self.bn = nn.BatchNorm2d(2 * c_, eps=BN_EPS, momentum=BN_MOMENTUM)  # applied to cat(cv2, cv3)
        self.act = make_activation(csp_act or act) if isinstance(csp_act or act, str) else (csp_act or act)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0, act=act) for _ in range(n)))

    def forward(self, x):
        hidden = self.m(self.cv1(x))
        z = folded_csp_tail(self, x, hidden) if self.fold is not None else None
        if z is None:
            z = self.bn(torch.cat((self.cv3(hidden), self.cv2(x)), 1))
        return self.cv4(self.act(z))

    def _apply(self, fn, *args, **kwargs):  # .to()/.half()/.cuda(): folded copies are stale
        if self.fold is not None:
            self.fold.clear()
        return super()._apply(fn, *args, **kwargs)


class C3(nn.Module):
    """CSP bottleneck with three Convs (YOLOv5 v4.0+)."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5, act='SiLU'):
        super().__init__()
        c_ = int(c2 * e)  # hidden channels
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c1, c_, 1, 1, act=act)
        self.cv3 = Conv(2 * c_, c2, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0, act=act) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools of kernels ``k`` (YOLOv3-SPP)."""

    def __init__(self, c1, c2, k=(5, 9, 13), act='SiLU'):
        super().__init__()
        c_ = c1 // 2  # hidden channels
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP: three chained 5x5 max-pools, equal to SPP(k=(5, 9, 13)) in output and cheaper."""

    def __init__(self, c1, c2, k=5, act='SiLU'):
        super().__init__()
        c_ = c1 // 2  # hidden channels
        self.cv1 = Conv(c1, c_, 1, 1, act=act)
        self.cv2 = Conv(c_ * 4, c2, 1, 1, act=act)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension``."""

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)
