"""The frozen fast path (models/fastpath.py) computes what the plain forward computes and changes no tensor."""
from copy import deepcopy

import pytest
import torch

from models.yolo import Model
from utils.train.engine import ModelEMA
from utils.freeze.plan import changed_frozen, freeze, frozen_names, snapshot_frozen, unfreeze

FAST = dict(fold=True, no_grad=True, channels_last=True)


def make(cfg='v6/yolov5n.yaml', spec='10'):
    torch.manual_seed(0)
    m = Model(cfg, nc=3)
    with torch.no_grad():  # BatchNorm statistics away from the identity, so folding has something to fold
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.8, 1.25)
            bn.weight.uniform_(0.8, 1.2)
            bn.bias.uniform_(-0.1, 0.1)
    freeze(m, spec)
    return m


def plain_copy(model, dtype=None):
    m = deepcopy(model)
    m.set_frozen_fast_path(None)
    return m.to(dtype) if dtype else m


def outputs(model, x, train):
    model.train(train)
    out = model(x)
    return list(out) if train else [out[0]]


def rel_error(a, ref):
    return max(((u.double() - v).abs().max() / v.abs().max()).item() for u, v in zip(a, ref))


@pytest.mark.slow
@pytest.mark.parametrize('cfg,spec,train', [  # v6: C3/SPPF; v3.1: Focus/BottleneckCSP/SPP
    ('v6/yolov5n.yaml', '10', True), ('v6/yolov5n.yaml', 'all', False),
    ('yolov5n.yaml', '10', False), ('yolov5n.yaml', 'all', True)])
def test_fast_path_is_as_exact_as_the_plain_forward(cfg, spec, train):
    """Against a float64 reference, the fast path is as close as the plain float32 forward (folding is exact in
    eval mode; only rounding differs)."""
    model = make(cfg, spec)
    assert model.fast_path is not None and model.fast_path.cut == (10 if spec == '10' else len(model.model) - 1)
    x = torch.rand(2, 3, 64, 64)
    ref = outputs(plain_copy(model, torch.float64), x.double(), train)
    plain = outputs(plain_copy(model), x, train)
    fast = outputs(model, x, train)
    assert rel_error(fast, ref) <= 4 * rel_error(plain, ref) + 1e-6
    folded = [m for m in model.modules() if getattr(m, 'fold', None) is not None and m.fold.tensors is not None]
    assert len(folded) >= 10  # the frozen Convs really ran folded


def gradients(model, x):
    """Gradients of the fast, the plain float32 and a plain float64 copy of ``model`` (in train mode)."""
    grads = []
    for m, xm in ((model, x), (plain_copy(model), x), (plain_copy(model, torch.float64), x.double())):
        sum((t ** 2).mean() for t in outputs(m, xm, True)).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    return grads


def test_gradients_are_as_exact_as_the_plain_forward():
    fast, plain, ref = gradients(make(), torch.rand(2, 3, 64, 64))
    assert fast.keys() == ref.keys() and all(int(n.split('.')[1]) >= 10 for n in fast)
    assert rel_error(fast.values(), ref.values()) <= 4 * rel_error(plain.values(), ref.values()) + 1e-6


def input_layouts(model, x, train):
    """{layer index: whether its first input arrived channels_last} for the first trainable layer and Detect."""
    seen = {}

    def hook(i):
        def record(module, args):
            t = args[0][0] if isinstance(args[0], list) else args[0]
            seen[i] = not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
        return record

    handles = [model.model[i].register_forward_pre_hook(hook(i)) for i in (10, len(model.model) - 1)]
    outputs(model, x, train)
    for h in handles:
        h.remove()
    return seen


def test_layers_after_the_prefix_run_in_channels_last_and_inference_gives_detect_the_default_layout():
    """On CPU the layers after the frozen prefix stay in NHWC (oneDNN's convolutions, backward included, are faster
    there); inference hands Detect contiguous maps, as the exports and the kept model's heads compute them."""
    model, x = make(), torch.rand(2, 3, 64, 64)
    assert input_layouts(model, x, train=True) == {10: True, 24: True}
    assert input_layouts(model, x, train=False) == {10: True, 24: False}


def test_state_dict_and_frozen_tensors_untouched_by_training():
    model = make()
    keys = list(model.state_dict())
    snap = snapshot_frozen(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        sum(t.float().mean() for t in outputs(model, torch.rand(2, 3, 64, 64), True)).backward()
        opt.step()
    assert list(model.state_dict()) == keys  # no folded tensor in state_dict, no key renamed
    assert changed_frozen(model, snap) == []
    assert all(t.is_contiguous() for t in model.state_dict().values())  # channels_last never reaches a tensor


@pytest.mark.slow
def test_folded_weights_follow_their_sources():
    """load_state_dict, a dtype change and unfreezing: each gives the plain result again, never stale weights."""
    model = make()
    x = torch.rand(1, 3, 64, 64)
    outputs(model, x, False)  # fills the caches
    other = make()
    with torch.no_grad():
        for t in other.state_dict().values():
            if t.dtype.is_floating_point:
                t.mul_(1.1)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(outputs(model, x, False), outputs(plain_copy(other), x, False))
    model.double()
    torch.testing.assert_close(outputs(model, x.double(), False), outputs(plain_copy(other, torch.float64),
                                                                          x.double(), False))
    unfreeze(model)
    model.train()
    sum(t.mean() for t in model(x.double())).backward()
    assert model.model[0].conv.weight.grad is not None  # released layers learn again
    assert all(m.fold.tensors is None for m in model.modules() if getattr(m, 'fold', None) is not None)


def test_frozen_layer_after_a_trainable_one_passes_gradients_back():
    """Freezing 0 1 2 4: the gradient-free prefix stops at layer 3; frozen layer 4 still carries gradient to it."""
    model = make(spec='0 1 2 4')
    assert model.fast_path.cut == 3
    fast, plain, ref = gradients(model, torch.rand(2, 3, 64, 64))
    assert 'model.3.conv.weight' in fast and 'model.4.cv1.conv.weight' not in fast
    assert rel_error(fast.values(), ref.values()) <= 4 * rel_error(plain.values(), ref.values()) + 1e-6


def test_input_needing_a_gradient_gets_one():
    model = make()
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    sum(t.mean() for t in outputs(model, x, True)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bn_statistics_that_train_are_never_folded():
    """--freeze-bn-stats false: frozen weights, BatchNorm in train mode: batch statistics as the plain forward."""
    model = make()
    model.frozen_bn = set()
    model.set_frozen_fast_path(fold=True, no_grad=True, channels_last=False)  # same layout: same rounding
    plain = plain_copy(model)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(outputs(model, x, True), outputs(plain, x, True))
    torch.testing.assert_close(model.model[0].bn.running_mean, plain.model[0].bn.running_mean)
    assert model.model[0].fold.tensors is None


def test_ema_copy_starts_with_empty_caches_and_matches():
    model = make()
    outputs(model, torch.rand(1, 3, 64, 64), False)
    ema = ModelEMA(model)
    ema.set_frozen(frozen_names(model))
    assert all(m.fold.tensors is None for m in ema.ema.modules() if getattr(m, 'fold', None) is not None)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(ema.ema(x)[0], plain_copy(ema.ema)(x)[0])


def test_fast_path_can_be_switched_off_and_on():
    model = make()
    model.set_frozen_fast_path(None)
    assert model.fast_path is None and model.model[0].fold is None
    model.set_frozen_fast_path(**dict(FAST, channels_last=False))
    assert model.fast_path.cut == 10 and not model.fast_path.channels_last


def test_weights_folded_under_inference_mode_are_not_reused_with_autograd():
    """detect/val fold under torch.inference_mode; a later forward with autograd on (training, export tracing)
    must not meet those inference tensors."""
    model = make().eval()
    model.model[0].requires_grad_(True)  # so layers 1-9, frozen and folded, see inputs that need a gradient
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)[0]
    with torch.enable_grad():
        got = model(x)[0]  # before the fix: 'Inference tensors cannot be saved for backward'
    got.sum().backward()
    assert torch.equal(got.detach(), expected)
    assert model.model[0].conv.weight.grad is not None
