"""Several models as one: their raw predictions joined before NMS (upstream YOLOv5's ``--weights a.pt b.pt``).

    model = load_models(['a.pt', 'b.onnx'], device)   # an Ensemble; one path gives that file's Backend
    model = load_models('a.pt', device, augment=True)   # with test-time augmentation (utils/deploy/tta.py)
    pred = model(x)       # (b, n_a + n_b, 5 + nc): every member's boxes, for one NMS to choose among

Joining before NMS lets a box that several members find keep the best of their scores, and a box only one
member finds still count. The members must share their classes (same names in the same order).
"""
from pathlib import Path

import torch

from utils.deploy.backends import Backend, load_backend
from utils.deploy.tta import with_tta
from utils.errors import InputError


def check_same_classes(backends):
    """One-line InputError naming both files when a member's class names differ from the first member's."""
    first = backends[0]
    for other in backends[1:]:
        if list(other.names) == list(first.names):
            continue
        if len(other.names) != len(first.names):
            how = f'{len(other.names)} classes, {first.path.name} has {len(first.names)}'
        else:
            i = next(i for i, (a, b) in enumerate(zip(first.names, other.names)) if a != b)
            how = f"class {i} is '{other.names[i]}', in {first.path.name} '{first.names[i]}'"
        raise InputError(f'--weights {other.path}: its classes differ from {first.path}\'s ({how}); an ensemble '
                         f'needs models of the same classes')


def common_size(backends):
    """The fixed input size (h, w) that the members' exports share, or None when all take any size."""
    fixed = {b.imgsz for b in backends if b.imgsz is not None}
    if len(fixed) > 1:
        raise InputError('--weights: the exports are fixed at different image sizes '
                         f"({', '.join(f'{b.path.name} {b.imgsz[0]}x{b.imgsz[1]}' for b in backends if b.imgsz)})"
                         '; re-export them at one size or with --dynamic')
    return fixed.pop() if fixed else None


class Ensemble(Backend):
    """A list of ``Backend``s (or TTA wrappers of them) called as one; see the module docstring."""

    format = 'Ensemble'

    def __init__(self, backends):
        if not backends:
            raise InputError('--weights: no weights files given')
        check_same_classes(backends)
        self.members = list(backends)
        # a CUDA member needs its input there; CPU runtimes (ONNX, OpenVINO) copy their input to the CPU anyway
        device = next((b.device for b in backends if b.device.type != 'cpu'), backends[0].device)
        super().__init__(backends[0].path, backends[0].names, max(int(b.stride) for b in backends),
                         common_size(backends), fp16=any(b.fp16 for b in backends), device=device)

    def __repr__(self):
        return f'Ensemble of {len(self.members)}: ' + ', '.join(repr(b) for b in self.members)

    def __call__(self, x):
        """(b, 3, h, w) -> every member's (b, n_i, 5 + nc) predictions concatenated along n."""
        return torch.cat([b(x) for b in self.members], 1)

    def warmup(self, imgsz=None):
        for b in self.members:
            b.warmup(self.imgsz or imgsz)


def load_models(weights, device='cpu', fp16=False, augment=False):
    """``load_backend`` for one weights file or several (an ``Ensemble``), with test-time augmentation when
    ``augment``. ``weights``: a path or a list of paths."""
    paths = [weights] if isinstance(weights, (str, Path)) else list(weights or [])
    if not paths:
        raise InputError('--weights is required')
    backends = [load_backend(w, device, fp16) for w in paths]
    model = backends[0] if len(backends) == 1 else Ensemble(backends)
    return with_tta(model) if augment else model
