import math

import pytest
import torch

from models.yolo import Model
from utils.train.engine import lr_factor, set_lr, warmup_accumulate
from utils.freeze.plan import FreezePlan, freeze
from utils.freeze.optim import build_optimizer, replace_optimizer

HYP = {'lr0': 0.01, 'lrf': 0.01, 'momentum': 0.937, 'warmup_momentum': 0.8, 'warmup_bias_lr': 0.1}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Model('v6/yolov5n.yaml', nc=2)


def test_lr_schedules():
    assert lr_factor(0, 10, 0.01) == 1.0 and math.isclose(lr_factor(10, 10, 0.01), 0.01)
    assert math.isclose(lr_factor(5, 10, 0.01), 0.505)
    assert math.isclose(lr_factor(5, 10, 0.01, cos=True), 0.505) and math.isclose(lr_factor(10, 10, 0.1, True), 0.1)
    assert lr_factor(2, 10, 0.01, cos=True) > lr_factor(2, 10, 0.01)  # cosine decays slower early


def test_optimizer_groups_and_warmup(model):
    freeze(model, 10)
    opt = build_optimizer(model, 'SGD', 0.01, 0.937, 5e-4)
    names = [g['name'] for g in opt.param_groups]
    assert names == ['decay', 'bn', 'bias'] and opt.defaults['nesterov']
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g['params']) for g in opt.param_groups) == n_trainable
    set_lr(opt, 0, 0, 10, HYP, warmup_iters=100)
    lrs = {g['name']: g['lr'] for g in opt.param_groups}
    assert lrs == {'decay': 0.0, 'bn': 0.0, 'bias': 0.1} and opt.param_groups[0]['momentum'] == 0.8
    set_lr(opt, 50, 0, 10, HYP, warmup_iters=100)
    assert math.isclose(opt.param_groups[2]['lr'], 0.055) and math.isclose(opt.param_groups[0]['lr'], 0.005)
    set_lr(opt, 150, 3, 10, HYP, warmup_iters=100)
    assert all(math.isclose(g['lr'], 0.01 * lr_factor(3, 10, 0.01)) for g in opt.param_groups)
    with pytest.raises(ValueError, match='--optimizer Lion'):
        build_optimizer(model, 'Lion')


@pytest.mark.parametrize('name', ['SGD', 'AdamW'])
def test_foreach_and_fused_optimizer_steps_match_the_default(name):
    def stepped(impl):
        torch.manual_seed(0)
        layer = torch.nn.Conv2d(3, 8, 3)
        opt = build_optimizer(layer, name, 0.01, 0.9, 5e-4, impl=impl)
        for _ in range(3):
            layer(torch.randn(2, 3, 8, 8)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        return layer.weight.detach()
    default = stepped('default')
    for impl in ('foreach', 'fused'):
        assert torch.allclose(stepped(impl), default, rtol=0, atol=1e-6), impl
    with pytest.raises(ValueError, match='optimizer implementation apex'):
        build_optimizer(torch.nn.Conv2d(3, 8, 3), name, impl='apex')


def test_warmup_accumulation():
    assert warmup_accumulate(0, 100, 16) == 1
    assert warmup_accumulate(100, 100, 16) == 4 and warmup_accumulate(1000, 100, 64) == 1


def test_rebuild_after_unfreeze_keeps_state_and_ramps_new(model):
    freeze(model, 10)
    opt = build_optimizer(model, 'SGD', 0.01, 0.937, 5e-4)
    model.train()
    model(torch.rand(1, 3, 64, 64))[0].sum().backward()
    opt.step()
    some_trainable = next(p for p in model.parameters() if p.requires_grad)
    state_before = opt.state[some_trainable]['momentum_buffer'].clone()
    plan = FreezePlan.from_spec(10, model)  # already frozen; release unfreezes all
    new = replace_optimizer(opt, plan.release(model, opt, 5e-4, start_iter=100, ramp_iters=10), 'SGD', 0.01, 0.937)
    assert [g['name'] for g in new.param_groups] == ['decay', 'decay', 'bn', 'bn', 'bias', 'bias']
    assert sum(len(g['params']) for g in new.param_groups) == sum(1 for _ in model.parameters())
    assert torch.equal(new.state[some_trainable]['momentum_buffer'], state_before)
    ramped = [g for g in new.param_groups if 'ramp' in g]
    assert ramped and all(id(p) != id(some_trainable) for g in ramped for p in g['params'])
    set_lr(new, 105, 5, 10, HYP, warmup_iters=10)
    plain = [g for g in new.param_groups if 'ramp' not in g]
    assert all(math.isclose(g['lr'], plain[0]['lr'] * 0.5) for g in ramped)


def test_momentum_reaches_its_target_after_warmup(model):
    opt = build_optimizer(model, 'SGD', 0.01, 0.937, 5e-4)
    set_lr(opt, 0, 0, 10, HYP, warmup_iters=100)
    assert all(g['momentum'] == 0.8 for g in opt.param_groups)
    set_lr(opt, 99, 0, 10, HYP, warmup_iters=100)  # last warm-up iteration: not quite there
    assert all(g['momentum'] < 0.937 for g in opt.param_groups)
    set_lr(opt, 100, 1, 10, HYP, warmup_iters=100)
    assert all(g['momentum'] == 0.937 for g in opt.param_groups)


def test_backbone_lr_scales_only_the_backbone_groups_through_warm_up_and_schedule():
    from utils.freeze.optim import make_optimizer, optimizer_param_groups, scale_lr
    from utils.freeze.plan import parse_freeze
    model = Model('v6/yolov5n.yaml', nc=2)
    assert scale_lr(optimizer_param_groups(model), model, ['model.0.'], 1.0) == optimizer_param_groups(model)
    groups = scale_lr(optimizer_param_groups(model), model, parse_freeze('backbone', model), 0.1)
    opt = make_optimizer(groups, 'SGD', 0.01, 0.937)
    assert [g['name'] for g in opt.param_groups] == ['decay', 'decay', 'bn', 'bn', 'bias', 'bias']
    backbone = {id(p) for n, p in model.named_parameters() if int(n.split('.')[1]) < 10}
    for g in opt.param_groups:
        assert all((id(p) in backbone) == ('lr_scale' in g) for p in g['params'])
    hyp = {'lrf': 0.1, 'warmup_bias_lr': 0.1, 'warmup_momentum': 0.8, 'momentum': 0.937}
    for ni in (5, 50):  # in the warm-up and after it
        set_lr(opt, ni, 0, 10, hyp, warmup_iters=10)
        lrs = [g['lr'] for g in opt.param_groups]
        assert lrs[1] == pytest.approx(0.1 * lrs[0]) and lrs[5] == pytest.approx(0.1 * lrs[4]) and lrs[0] > 0
