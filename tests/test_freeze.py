import pytest
import torch
import torch.nn as nn

from models.yolo import Model
from utils.freeze.plan import (
    FreezePlan,
    changed_frozen,
    freeze,
    freeze_report,
    freeze_summary,
    frozen_names,
    parse_freeze,
    snapshot_frozen,
    unfreeze,
)
from utils.freeze.optim import optimizer_param_groups


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Model('v6/yolov5n.yaml', nc=4)


def frozen_layers(model):
    return sorted({int(n.split('.')[1]) for n, p in model.named_parameters() if not p.requires_grad})


@pytest.mark.parametrize('spec,layers', [
    ('10', list(range(10))), (10, list(range(10))), (['10'], list(range(10))),
    ('0', []), (['0', '1', '2'], [0, 1, 2]), ('3 5', [3, 5]), ('4,7', [4, 7]),
    ('backbone', list(range(10))), (['model.24.'], [24]), (['model.23'], [23]),
    ('all', list(range(24))), (['backbone', '13'], list(range(10)) + [13]), ('25', list(range(25))),
])
def test_every_freeze_form(model, spec, layers):
    freeze(model, spec)
    with_params = {int(n.split('.')[1]) for n, _ in model.named_parameters()}  # Upsample/Concat have none
    assert frozen_layers(model) == [i for i in layers if i in with_params]


def test_freeze_10_selects_exactly_model_0_to_9(model):
    freeze(model, 10)
    for name, p in model.named_parameters():
        assert p.requires_grad == (int(name.split('.')[1]) >= 10), name


def test_prefix_matches_whole_components():
    m = Model('v6/yolov5n.yaml', nc=4)
    freeze(m, ['model.1.'])
    assert frozen_layers(m) == [1]  # never model.11.
    assert all(p.requires_grad for n, p in m.named_parameters() if n.startswith('model.11.'))
    m2 = Model('v6/yolov5n.yaml', nc=4)
    freeze(m2, ['model.2.m.0'])
    assert {n for n, p in m2.named_parameters() if not p.requires_grad} == {
        n for n, _ in m2.named_parameters() if n.startswith('model.2.m.0.')}
    assert {'model.2.m.0.cv1.bn', 'model.2.m.0.cv2.bn'} == m2.frozen_bn


def test_backbone_follows_yaml():
    m = Model('v6/yolov5n.yaml')
    m.yaml['backbone'] = m.yaml['backbone'][:7]  # a P6-like model would have a longer backbone; here shorter
    assert parse_freeze('backbone', m) == [f'model.{i}.' for i in range(7)]


@pytest.mark.parametrize('spec,msg', [
    ('26', 'only 25 layers'), (['0', '25'], 'layer 25 is out of range'), ('heads', "expected a layer count"),
    (['model.99.'], "no parameter name starts with 'model.99.'"), (['-1'], 'expected a layer count'),
])
def test_bad_freeze_specs(model, spec, msg):
    with pytest.raises(ValueError, match=msg):
        freeze(model, spec)


def test_optimizer_groups_hold_trainable_only(model):
    freeze(model, 'backbone')
    groups = optimizer_param_groups(model, weight_decay=5e-4)
    ids = {id(p) for g in groups for p in g['params']}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids == trainable
    assert [g['weight_decay'] for g in groups] == [5e-4, 0.0, 0.0]
    assert all(p.dim() == 4 for p in groups[0]['params'])  # conv weights only
    assert all(p.dim() == 1 for p in groups[1]['params'] + groups[2]['params'])
    n_bn = sum(1 for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and int(n.split('.')[1]) >= 10)
    assert len(groups[1]['params']) == n_bn


def test_frozen_bn_stays_eval_after_train(model):
    freeze(model, 10)
    model.train()
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == (int(name.split('.')[1]) >= 10), name


def train_step(model, steps=2):
    model.train()
    opt = torch.optim.SGD(optimizer_param_groups(model, 5e-4), lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(steps):
        out = model(torch.rand(2, 3, 128, 128))
        loss = sum((o.sigmoid() ** 2).mean() for o in out)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_frozen_tensors_bit_identical_after_training(model):
    freeze(model, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}  # cloned: state_dict shares storage
    snap = snapshot_frozen(model)
    train_step(model)
    after = model.state_dict()
    assert changed_frozen(model, snap) == []
    for k, v in before.items():
        layer = int(k.split('.')[1])
        same = torch.equal(v, after[k])
        if layer < 10:
            assert same, f'frozen {k} changed'
        elif k.endswith(('running_mean', 'running_var', 'num_batches_tracked')) or k.endswith('.weight'):
            assert not same, f'trainable {k} did not change'


def test_snapshot_covers_bn_buffers(model):
    freeze(model, '2')
    names = frozen_names(model)
    assert 'model.0.bn.running_mean' in names and 'model.1.bn.num_batches_tracked' in names
    assert set(names) == set(snapshot_frozen(model))
    snap = snapshot_frozen(model)
    with torch.no_grad():
        model.model[0].bn.running_var.add_(1)  # a change must be caught (the snapshot is a clone)
    assert changed_frozen(model, snap) == ['model.0.bn.running_var']


def test_unfreeze_all_and_partial(model):
    freeze(model, 10)
    unfreeze(model, ['0', '1'])
    assert frozen_layers(model) == list(range(2, 10))
    assert model.model[0].bn.training and not model.model[2].cv1.bn.training
    unfreeze(model)
    assert frozen_layers(model) == [] and model.frozen_bn == set()
    snap_before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, 1)
    assert not torch.equal(snap_before['model.0.bn.running_mean'], model.state_dict()['model.0.bn.running_mean'])


def test_report(model):
    freeze(model, 10)
    s = freeze_summary(model, 640)
    assert [r['state'] for r in s['rows']] == ['frozen'] * 10 + ['trainable'] * 15
    assert s['frozen_params'] == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert 0.3 < s['frozen_flops_share'] < 0.7
    text = freeze_report(model)
    assert 'frozen' in text and f"{s['frozen_params']:,}" in text and '25 BatchNorm' not in text


def test_freezing_part_of_a_batchnorm_freezes_its_statistics(model):
    freeze(model, ['model.3.bn.weight'])
    assert model.frozen_bn == {'model.3.bn'} and not model.model[3].bn.training
    model.train()
    assert not model.model[3].bn.training and 'model.3.bn.running_mean' in frozen_names(model)


def test_freeze_plan_apply_skip_and_checkpoint_round_trip(model):
    plan = FreezePlan.from_spec('2', model).apply(model)
    assert plan.prefixes == ['model.0.', 'model.1.'] and plan.bn_names == ['model.0.bn', 'model.1.bn']
    assert model.frozen_bn == {'model.0.bn', 'model.1.bn'}
    assert set(plan.digests) == set(frozen_names(model)) == plan.ema_skip
    assert 'model.0.bn.running_mean' in plan.digests
    with torch.no_grad():
        model.model[0].conv.weight.add_(1)  # a resumed model has moved on; the plan keeps the run's start
    again = FreezePlan.from_checkpoint({**plan.state_dict(), 'opt': {}, 'epoch': 3})
    assert again == plan
    fresh = Model('v6/yolov5n.yaml', nc=2)
    assert again.apply(fresh).digests == plan.digests and fresh.frozen_bn == {'model.0.bn', 'model.1.bn'}


def test_freeze_plan_without_bn_stats_is_upstream(model):
    plan = FreezePlan.from_spec('2', model, bn_stats=False).apply(model)
    model.train()
    assert model.frozen_bn == set() and model.model[0].bn.training
    assert not model.model[0].conv.weight.requires_grad
    assert 'model.0.conv.weight' in plan.ema_skip and 'model.0.bn.running_mean' not in plan.ema_skip
    assert 'keep updating their statistics' in plan.report(model, 64)


def test_freeze_plan_verify_and_release(model):
    plan = FreezePlan.from_spec('10', model).apply(model)
    logs = []
    assert plan.verify(model, log=logs.append) == len(plan.digests) and 'Frozen tensors verified' in logs[0]
    opt = torch.optim.SGD(optimizer_param_groups(model), lr=0.1)
    groups = plan.release(model, opt, 5e-4, start_iter=30, ramp_iters=10)
    assert plan.released and plan.ema_skip == set() and model.frozen_bn == set()
    assert all(p.requires_grad for p in model.parameters())
    ramped = {id(p) for g in groups if 'ramp' in g for p in g['params']}
    assert ramped == {id(p) for n, p in model.named_parameters() if int(n.split('.')[1]) < 10}
    assert all(g['ramp'] == (30, 10) for g in groups if 'ramp' in g)
    assert plan.verify(model) == 0  # released: nothing is frozen any more


def test_freeze_plan_verify_catches_a_changed_tensor(model):
    plan = FreezePlan.from_spec('3', model).apply(model)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ema['model.2.cv1.bn.running_var'] += 1
    with pytest.raises(RuntimeError, match='1 frozen tensors changed during training: EMA:model.2.cv1.bn.running_var'):
        plan.verify(model, ema, log=lambda s: None)


def test_freeze_plan_all_bn_stats_fixes_every_batchnorm_while_weights_train(model):
    from utils.freeze.plan import bn_stats_option
    plan = FreezePlan.from_spec('2', model, bn_stats=bn_stats_option('all')).apply(model)
    all_bn = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert model.frozen_bn == all_bn and plan.bn_names == ['model.0.bn', 'model.1.bn']
    assert 'model.5.bn.running_mean' in plan.digests and 'model.5.conv.weight' not in plan.digests
    model.train()
    assert not any(m.training for n, m in model.named_modules() if n in all_bn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(optimizer_param_groups(model), lr=0.1)
    sum(o.sum() for o in model(torch.rand(2, 3, 64, 64))).backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if 'running_' in k or 'num_batches' in k)
    assert not torch.equal(before['model.5.conv.weight'], after['model.5.conv.weight'])  # trainable: moved
    assert torch.equal(before['model.0.conv.weight'], after['model.0.conv.weight'])  # frozen: not
    assert plan.verify(model, log=lambda s: None) == len(plan.digests)
    assert '--freeze-bn-stats all' in plan.report(model, 64)
    plan.release(model, opt, 5e-4, start_iter=0, ramp_iters=1)
    assert model.frozen_bn == all_bn  # released weights train; the statistics stay as loaded
    again = FreezePlan.from_checkpoint({**plan.state_dict(), 'opt': {}, 'epoch': 3})
    assert again.bn_stats == 'all' and again == plan
    assert FreezePlan.from_checkpoint({'opt': {'freeze_bn_stats': 'all'}}).bn_stats == 'all'
