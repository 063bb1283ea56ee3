import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.yolo import Model
from utils.train.engine import ModelEMA, ema_settings
from utils.freeze.plan import freeze, frozen_names
from utils.train.loss import (LEVEL_BALANCE, ComputeLoss, FocalBCE, anchor_metrics, bbox_ciou, check_anchors,
                              kmean_anchors, scale_loss_gains)

HYP = {'box': 0.05, 'obj': 1.0, 'cls': 0.5, 'cls_pw': 1.0, 'obj_pw': 1.0, 'anchor_t': 4.0}


def test_ciou_hand_values():
    a = torch.tensor([[5., 5., 4., 4.]])
    assert torch.allclose(bbox_ciou(a, a), torch.tensor([1.0]), atol=1e-6)
    b = torch.tensor([[7., 5., 4., 4.]])  # shifted by 2: IoU 8/24, enclosing 6x4, centre distance 2
    expected = 8 / 24 - 4 / (36 + 16)
    assert torch.allclose(bbox_ciou(a, b), torch.tensor([expected]), atol=1e-5)


def test_gain_scaling():
    h = scale_loss_gains(HYP, nl=3, nc=20, imgsz=320)
    assert math.isclose(h['cls'], 0.5 * 20 / 80) and math.isclose(h['obj'], 0.25) and h['box'] == 0.05
    assert HYP['obj'] == 1.0  # input untouched


def make_model():
    torch.manual_seed(0)
    return Model('v6/yolov5n.yaml', nc=3)


def test_target_assignment_anchor_and_cells():
    model = make_model()
    loss = ComputeLoss(model, HYP)
    preds = [torch.zeros(1, 3, s, s, 8) for s in (16, 8, 4)]  # 128x128 input
    # one box centred at (0.3, 0.6) of a 128 image: grid (4.8, 9.6) at P3; 20x26 px matches anchor (16, 30)?
    targets = torch.tensor([[0, 2, 0.3, 0.6, 20 / 128, 26 / 128]])
    tcls, tbox, indices, anch = loss.build_targets(preds, targets)
    b, a, gj, gi = indices[0]
    # P3 anchors (px): 10x13, 16x30, 33x23: all within ratio 4 of 20x26 -> 3 anchors x 3 cells
    assert sorted(set(a.tolist())) == [0, 1, 2]
    cells = sorted(set(zip(gj.tolist(), gi.tolist())))
    # x frac .8 -> right neighbour (x+1); y frac .6 -> bottom neighbour (y+1)
    assert cells == [(9, 4), (9, 5), (10, 4)]
    assert tcls[0].tolist() == [2] * 9
    assert torch.allclose(tbox[0][0], torch.tensor([0.8, 0.6, 2.5, 3.25]), atol=1e-5)
    # P5 anchors 116x90... are > 4x the box: no assignment at level 2
    assert indices[2][0].numel() == 0


def test_perfect_prediction_gives_zero_box_loss():
    model = make_model()
    loss = ComputeLoss(model, HYP)
    preds = [torch.full((1, 3, s, s, 8), -10.0) for s in (16, 8, 4)]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 20 / 128, 26 / 128]])
    tcls, tbox, indices, anch = loss.build_targets(preds, targets)
    for i, (b, a, gj, gi) in enumerate(indices):
        for k in range(b.shape[0]):
            xy, wh = tbox[i][k, :2], tbox[i][k, 2:]
            p = preds[i][b[k], a[k], gj[k], gi[k]]
            p[:2] = torch.logit((xy + 0.5) / 2)  # inverse of sigmoid*2-0.5
            p[2:4] = torch.logit(torch.sqrt(wh / anch[i][k]) / 2)
            p[4] = 10.0
            p[5:] = -10.0
            p[5 + tcls[i][k]] = 10.0
    _, items = loss(preds, targets)
    assert items[0] < 1e-4  # box loss ~ 0
    assert items[2] < 1e-3  # class loss ~ 0
    _, items_bad = loss([torch.zeros_like(p) for p in preds], targets)
    assert items_bad[0] > 0.01 and items_bad[1] > items[1]


@pytest.mark.slow
def test_loss_backward_and_empty_targets():
    model = make_model().train()
    loss = ComputeLoss(model, HYP)
    preds = model(torch.rand(2, 3, 128, 128))
    total, items = loss(preds, torch.zeros((0, 6)))
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    total.backward()
    assert model.model[-1].m[0].bias.grad is not None


def test_ema_skips_frozen_and_tracks_trainable():
    model = make_model()
    freeze(model, 10)
    ema = ModelEMA(model, decay=0.9)
    ema.set_frozen(frozen_names(model))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # pretend a step changed everything
    before = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    ema.update(model)
    after = ema.ema.state_dict()
    assert torch.equal(after['model.0.conv.weight'], before['model.0.conv.weight'])
    assert not torch.equal(after['model.24.m.0.weight'], before['model.24.m.0.weight'])
    d = ema.current_decay()
    assert torch.allclose(after['model.24.m.0.weight'], before['model.24.m.0.weight'] + (1 - d), atol=1e-5)


def test_ema_decay_ramps_by_default_and_starts_full_with_tau_zero():
    model = make_model()
    ramped, full = ModelEMA(model, *ema_settings({})), ModelEMA(model, *ema_settings({'ema_decay': 0.95, 'ema_tau': 0}))
    ramped.updates = full.updates = 1
    assert ramped.current_decay() == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))  # YOLOv5's ramp
    assert full.current_decay() == 0.95
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    key = 'model.24.m.0.weight'
    before = full.ema.state_dict()[key].clone()
    full.update(model)  # the second update: full decay, the EMA moves 5% of the way
    assert torch.allclose(full.ema.state_dict()[key], before + 0.05, atol=1e-5)
    with pytest.raises(ValueError, match='ema_decay'):
        ema_settings({'ema_decay': 1.0})
    with pytest.raises(ValueError, match='^my/hyp.yaml: ema_decay'):  # the hyp file is named
        ema_settings({'ema_tau': -1}, 'my/hyp.yaml')


def test_autoanchor_metrics_and_kmeans():
    wh = np.array([[10, 10], [40, 40], [160, 160]], np.float32).repeat(20, 0)
    bpr, _ = anchor_metrics([[10, 10]], wh, thr=4.0)
    assert math.isclose(bpr, 1 / 3, rel_tol=1e-6)  # only the 10x10 boxes are within 4x of the anchor
    k = kmean_anchors(wh * np.random.default_rng(0).uniform(0.9, 1.1, (60, 1)).astype(np.float32), n=3, gen=50)
    assert anchor_metrics(k, wh, 4.0)[0] == 1.0 and k.shape == (3, 2)


def test_check_anchors_replaces_poor_anchors():
    model = make_model()
    n = 40
    ds = SimpleNamespace(shapes=np.full((n, 2), 640.0), labels=[np.array([[0, .5, .5, .9, .02]], np.float32)] * n)
    before = model.model[-1].anchors.clone()
    bpr, new_bpr = check_anchors(ds, model, imgsz=640, log=lambda s: None)
    assert bpr < 0.98 and new_bpr > bpr
    assert not torch.equal(before, model.model[-1].anchors)


def test_check_anchors_with_too_few_boxes_warns_and_keeps_anchors():
    model = make_model()
    ds = SimpleNamespace(shapes=np.full((3, 2), 640.0), labels=[np.array([[0, .5, .5, .9, .02]], np.float32)] * 3)
    before = model.model[-1].anchors.clone()
    logs = []
    bpr, new_bpr = check_anchors(ds, model, imgsz=640, log=logs.append)  # 3 boxes < 9 anchors
    assert bpr < 0.98 and new_bpr == bpr
    assert torch.equal(before, model.model[-1].anchors)
    assert 'too few to evolve 9 anchors' in logs[-1]


def test_focal_bce_hand_values():
    focal = FocalBCE(torch.nn.BCEWithLogitsLoss(), gamma=1.5)
    # logit 0, target 1: BCE ln 2, p_t 0.5, alpha_t 0.25 -> ln2 * 0.25 * 0.5 ** 1.5
    assert math.isclose(float(focal(torch.zeros(1), torch.ones(1))), math.log(2) * 0.25 * 0.5 ** 1.5, rel_tol=1e-6)
    # logit 2, target 0: p_t = 1 - sigmoid(2), alpha_t 0.75
    p = 1 / (1 + math.exp(-2))
    expected = -math.log(1 - p) * 0.75 * p ** 1.5
    assert math.isclose(float(focal(torch.full((1,), 2.0), torch.zeros(1))), expected, rel_tol=1e-5)
    gamma0 = FocalBCE(torch.nn.BCEWithLogitsLoss(), gamma=0.0)  # gamma 0: alpha-weighted BCE
    assert math.isclose(float(gamma0(torch.zeros(1), torch.ones(1))), math.log(2) * 0.25, rel_tol=1e-6)


def test_fl_gamma_switches_cls_and_obj_to_focal_loss():
    model = make_model().train()
    preds = model(torch.rand(2, 3, 128, 128))
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2]])
    _, plain = ComputeLoss(model, {**HYP, 'fl_gamma': 0.0})(preds, targets)
    focal_loss = ComputeLoss(model, {**HYP, 'fl_gamma': 1.5})
    _, focal = focal_loss(preds, targets)
    assert isinstance(focal_loss.bce_cls, FocalBCE) and isinstance(focal_loss.bce_obj, FocalBCE)
    assert torch.isclose(focal[0], plain[0])  # box loss untouched
    assert focal[1] < plain[1] and focal[2] < plain[2]  # (1 - p_t) ** gamma < 1 and alpha_t < 1 shrink both


def test_loss_instances_do_not_share_level_balance():
    a, b = ComputeLoss(make_model(), HYP), ComputeLoss(make_model(), HYP)
    a.balance[0] = 99.0
    assert b.balance[0] == 4.0 and LEVEL_BALANCE[3][0] == 4.0
