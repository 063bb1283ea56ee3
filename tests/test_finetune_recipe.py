"""The fine-tune recipe for a pretrained start: warm-up sized to the run, pretrained anchors kept."""
from types import SimpleNamespace

import numpy as np
import torch

from models.yolo import Model
from utils.train.loss import check_anchors
from utils.train.engine import warmup_iterations

HYP = {'warmup_epochs': 3.0}


def test_warmup_is_yolov5s_rule_but_never_more_than_a_tenth_of_the_run():
    assert warmup_iterations(HYP, nb=500, epochs=300) == 1500  # a long run: 3 epochs, as YOLOv5
    assert warmup_iterations(HYP, nb=20, epochs=100) == 100  # 100-iteration floor, 5% of the run
    assert warmup_iterations(HYP, nb=4, epochs=20) == 8  # YOLOv5: 100 iterations = the whole run
    assert warmup_iterations(HYP, nb=1, epochs=3) == 1
    assert warmup_iterations({**HYP, 'warmup_share': 0.5}, nb=4, epochs=20) == 40


def test_autoanchor_only_checks_the_anchors_of_a_pretrained_model():
    model = Model('v6/yolov5n.yaml', nc=1)
    n = 40
    ds = SimpleNamespace(shapes=np.full((n, 2), 640.0), labels=[np.array([[0, .5, .5, .9, .02]], np.float32)] * n)
    before = model.model[-1].anchors.clone()
    lines = []
    bpr, after = check_anchors(ds, model, imgsz=640, log=lines.append, replace=False)
    assert bpr < 0.98 and after == bpr and torch.equal(before, model.model[-1].anchors)
    assert 'keeping the pretrained anchors' in lines[-1]
