"""Model summaries: FLOPs per layer (as YOLOv5 reports GFLOPs) and the layer table ``models/yolo.py`` prints."""
import torch
import torch.nn as nn

from models import fastpath


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
