"""Zero-shot evaluation through a class mapping (val.py), the zero-shot row of a pretrained train.py run, and the
trainer's model set-up from official weights (class rows mapped, --cfg anchors kept)."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
import yaml

import train
import val
from models.yolo import Model
from utils.weights.checkpoint import load_model
from utils.data.config import check_dataset
from utils.data.datasets import create_dataloader
from utils.eval.evaluator import EvalConfig, evaluate
from utils.eval.report import read_rows
from utils.train.setup import build_model
from utils.freeze.transfer_set import make_transfer_set

SHARED = Path(__file__).resolve().parents[1].parent / 'shared'
WEIGHTS = SHARED / 'weights' / 'yolov5n.pt'
COCO64 = SHARED / 'data' / 'coco64dev'
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file() or not COCO64.is_dir(),
                                reason='needs ../shared/weights/yolov5n.pt and ../shared/data/coco64dev')
IMGSZ = 256


@pytest.fixture(scope='module')
def grouped_yaml(tmp_path_factory):
    """The grouped coco64 transfer set (person, vehicle, animal: each mapped from COCO classes)."""
    return make_transfer_set('grouped', tmp_path_factory.mktemp('transfer') / 'set', COCO64)


@pytest.fixture(scope='module')
def transfer_yaml(grouped_yaml):
    """The same set, with 'animal' made a class that no checkpoint class feeds."""
    root, path = grouped_yaml.parent.parent, grouped_yaml
    cfg = yaml.safe_load(path.read_text())
    cfg['path'] = str(path.parent)
    cfg['class_map']['animal'] = []
    out = root / 'no_animal.yaml'
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def detect_then_remap(dets, source_to_data, iou_thres):
    """The test's own remap: keep source classes that feed a data class, relabel, per-class NMS, by confidence."""
    out = []
    for d in dets:
        rows = [torch.cat((r[:5], torch.tensor([float(source_to_data[int(r[5])])]))) for r in d
                if int(r[5]) in source_to_data]
        d = torch.stack(rows) if rows else d[:0]
        kept = [d[d[:, 5] == c][torchvision.ops.nms(d[d[:, 5] == c, :4], d[d[:, 5] == c, 4], iou_thres)]
                for c in d[:, 5].unique()]
        d = torch.cat(kept) if kept else d
        out.append(d[d[:, 4].argsort(descending=True)][:300])
    return out


@pytest.mark.slow
def test_val_evaluates_another_checkpoints_classes_through_the_mapping(transfer_yaml, tmp_path, capsys):
    result = val.run(data=str(transfer_yaml), weights=str(WEIGHTS), imgsz=IMGSZ, batch_size=16, workers=0,
                     device='cpu', plots=False, project=str(tmp_path), name='v')
    out = capsys.readouterr().out
    assert 'Zero-shot through a class mapping (yolov5n.pt: 80 classes -> data: 3)' in out
    assert '2/3 data classes mapped to checkpoint classes; no source (AP 0): animal' in out
    assert 'vehicle <- bicycle, car, motorcycle, airplane, bus, train, truck, boat (class_map)' in out
    data = check_dataset(transfer_yaml)
    names = load_model(WEIGHTS).names
    source_to_data = {names.index(s): i for i, n in enumerate(data['names']) for s in data['class_map'][n]}
    model = load_model(WEIGHTS, fuse=True)
    loader = create_dataloader(data['val'], IMGSZ, 16, 32, data=data, rect=True, pad=0.5, workers=0)[0]
    config = EvalConfig.for_data(data)
    own = evaluate(model, loader, config, postprocess=lambda dets, metas: detect_then_remap(dets, source_to_data,
                                                                                             config.iou_thres))
    assert result.map50 > 0.2 and result.maps[2] == 0 and result.maps[0] > 0.2  # maps: per-class mAP50-95
    assert result.map50 == pytest.approx(own.map50, abs=1e-9) and result.map == pytest.approx(own.map, abs=1e-9)
    assert result.p == pytest.approx(own.p, abs=1e-9) and result.r == pytest.approx(own.r, abs=1e-9)


@pytest.mark.slow
def test_pretrained_training_records_its_zero_shot_start(grouped_yaml, tmp_path, capsys):
    zs = val.run(data=str(grouped_yaml), weights=str(WEIGHTS), imgsz=IMGSZ, batch_size=16, workers=0,
                 device='cpu', plots=False, project=str(tmp_path), name='v')
    train.run(weights=str(WEIGHTS), data=str(grouped_yaml), epochs=1, imgsz=IMGSZ, batch_size=16, workers=0,
              device='cpu', project=str(tmp_path / 'runs'), name='ft', freeze=['10'])
    out = capsys.readouterr().out
    assert 'Zero-shot (before the first step): mAP50' in out
    assert 'Class rows (data <- checkpoint): person <- person | vehicle <- max(bicycle' in out
    rows = read_rows(tmp_path / 'runs' / 'ft' / 'results.csv')
    assert [r['epoch'] for r in rows] == [-1, 0]
    # the transferred model (vehicle = max over its 8 COCO rows) starts where the mapped checkpoint is
    assert rows[0]['metrics/mAP_0.5'] == pytest.approx(zs.map50, abs=0.02)
    assert rows[0]['x/lr0'] != rows[0]['x/lr0']  # NaN: no step yet
    assert (tmp_path / 'runs' / 'ft' / 'results.png').is_file()
    # the fine-tuned model has the data's classes: val.py evaluates it directly, though the YAML has a class_map
    tuned = val.run(data=str(grouped_yaml), weights=str(tmp_path / 'runs' / 'ft' / 'weights' / 'last.pt'),
                    imgsz=IMGSZ, batch_size=16, workers=0, device='cpu', plots=False, project=str(tmp_path), name='t')
    assert 'Zero-shot through a class mapping' not in capsys.readouterr().out
    assert tuned.map50 == pytest.approx(rows[1]['metrics/mAP_0.5'], abs=0.02)
    try:  # with tensorboard installed, the same start is logged as baseline/*
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return
    acc = EventAccumulator(str(tmp_path / 'runs' / 'ft'))
    acc.Reload()
    assert [e.value for e in acc.Scalars('baseline/mAP_0.5')] == [pytest.approx(rows[0]['metrics/mAP_0.5'], abs=1e-4)]


def test_trainer_model_maps_class_rows_and_keeps_cfg_anchors(transfer_yaml):
    data = check_dataset(transfer_yaml)
    cfg = load_model(WEIGHTS).yaml
    cfg = {**cfg, 'anchors': [[8, 9, 17, 20, 30, 25], [40, 60, 70, 50, 60, 120], [120, 90, 160, 200, 380, 330]]}
    logs = []
    run = SimpleNamespace(weights=str(WEIGHTS), cfg=cfg, single_cls=False, keep_classes=False,
                          device=torch.device('cpu'), log=logs.append)
    config = SimpleNamespace(nc=3, names=data['names'], data=data)
    model = build_model(run, config)
    assert torch.equal(model.model[-1].anchors, Model(cfg, nc=3).model[-1].anchors)
    assert model.model[-1].class_rows == (1, 8, 1) and 'Anchors from --cfg kept' in logs[0]
    run.cfg = ''
    official = load_model(WEIGHTS).model[-1].anchors
    assert torch.equal(build_model(run, config).model[-1].anchors, official)  # no --cfg: the checkpoint's
