"""val.py end to end on ../shared data with small models built here (tiny image sizes keep it fast)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import val
from models.yolo import Model
from utils.checkpoint import FORMAT, save_checkpoint
from utils.coco import coco80_to_coco91
from utils.datasets import check_dataset, create_dataloader, load_hyp
from utils.loss import ComputeLoss

SHARED = Path(__file__).resolve().parents[1] / '../shared/data'
COCO64_YAML = SHARED / 'coco64dev/coco64dev.yaml'
VOC = SHARED / 'voc_fixture/VOCdevkit'
needs_coco64 = pytest.mark.skipif(not COCO64_YAML.is_file(), reason='../shared/data/coco64dev not present')
VOC_NAMES = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
             'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor']
YOLOV5N = SHARED.parent / 'weights/yolov5n.pt'
needs_voc = pytest.mark.skipif(not VOC.is_dir(), reason='../shared/data/voc_fixture not present')


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models at tiny sizes: intra-op threads only add overhead, and on a busy machine spin-waiting
    threads make these runs 10-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chatty_model(nc, classes=(0, 2, 56)):
    """A random v6 'n' model with objectness raised and only ``classes`` likely, so that it emits plenty of
    (mostly wrong) detections of a few classes: enough for real metrics, few enough for a fast NMS."""
    torch.manual_seed(0)
    model = Model('v6/yolov5n.yaml', nc=nc)
    with torch.no_grad():
        for conv in model.model[-1].m:
            bias = conv.bias.view(model.model[-1].na, -1)
            bias[:, 4] += 8.0
            bias[:, 5:] = -8.0
            bias[:, [5 + c for c in classes if c < nc]] = 0.0
    return model


def save_model(model, path):
    return save_checkpoint({'format': FORMAT, 'yaml': model.yaml, 'names': model.names, 'model': model.state_dict(),
                            'ema': None, 'epoch': 0}, path)


@needs_coco64
def test_val_cli_save_json_agrees_with_pycocotools(tmp_path, capsys):
    weights = save_model(chatty_model(80), tmp_path / 'chatty.pt')
    val.main(['--weights', str(weights), '--data', str(COCO64_YAML), '--imgsz', '64', '--save-json', '--save-txt',
              '--save-conf', '--project', str(tmp_path), '--name', 'v', '--device', 'cpu'])
    out = capsys.readouterr().out
    assert 'Class     Images  Instances' in out and 'Speed:' in out and 'pycocotools' in out
    assert 'IoU=0.50:0.95 | area=   all | maxDets=100' in out  # pycocotools' own summary is printed
    ours, ours_coco, coco = side_by_side(out, 'mAP50-95')
    assert abs(ours_coco - coco) < 1e-3 and abs(ours - coco) < 5e-3
    run_dir = tmp_path / 'v'
    results = json.loads((run_dir / 'chatty_predictions.json').read_text())
    assert len(results) > 1000  # the chatty model detects plenty
    ids = {int(f.stem) for f in (COCO64_YAML.parent / 'images/train2017').glob('*.jpg')}
    assert {r['image_id'] for r in results} == ids  # COCO ids from the file names
    assert {r['category_id'] for r in results} <= set(coco80_to_coco91())
    labels = sorted((run_dir / 'labels').glob('*.txt'))
    assert len(labels) == 64 and len(labels[0].read_text().splitlines()[0].split()) == 6  # cls xywh conf
    assert (run_dir / 'confusion_matrix.png').is_file() and (run_dir / 'PR_curve.png').is_file()
    assert (run_dir / 'val_batch0_labels.jpg').is_file() and (run_dir / 'val_batch0_pred.jpg').is_file()


def side_by_side(out, metric):
    """(ours, ours under COCO rules, pycocotools) from the table val prints with --save-json."""
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == [metric])
    return tuple(map(float, row[1:4]))


@needs_coco64
@pytest.mark.skipif(not YOLOV5N.is_file(), reason='../shared/weights/yolov5n.pt not present')
def test_official_yolov5n_agrees_with_pycocotools(tmp_path, capsys):
    (p, r, map50, map_, *_), maps, _ = val.run(data=str(COCO64_YAML), weights=YOLOV5N, imgsz=160, device='cpu',
                                               save_json=True, plots=False, save_dir=tmp_path)
    out = capsys.readouterr().out
    for metric, ours_returned in (('mAP50-95', map_), ('mAP50', map50)):
        ours, ours_coco, coco = side_by_side(out, metric)
        assert ours == pytest.approx(ours_returned, abs=5e-5)
        assert abs(ours_coco - coco) < 1e-4 and abs(ours - coco) < 5e-3
    assert map_ > 0.15  # real detections (0.205 at imgsz 160; 0.419 at 640)


@needs_coco64
def test_val_run_as_called_by_train(tmp_path):
    data = check_dataset(str(COCO64_YAML))
    model = chatty_model(80).train()
    loader, dataset = create_dataloader(data['val'], 64, 32, 32, rect=True, pad=0.5, data=data, verbose=False)
    compute_loss = ComputeLoss(model, load_hyp())
    (p, r, map50, map_, *losses), maps, times = val.run(data=data, model=model, dataloader=loader,
                                                        compute_loss=compute_loss, half=True, save_dir=tmp_path,
                                                        plots=False, batch_size=32)
    assert model.training  # back in the mode it came in
    assert len(losses) == 3 and all(v > 0 for v in losses)
    assert maps.shape == (80,) and len(times) == 3 and all(t >= 0 for t in times)
    assert 0 <= map_ <= map50 <= 1 and 0 <= p <= 1 and 0 <= r <= 1
    assert not list(tmp_path.iterdir())  # plots=False, no JSON: nothing written


@needs_coco64
def test_ground_truth_from_targets_matches_records():
    data = check_dataset(str(COCO64_YAML))
    loader, dataset = create_dataloader(data['val'], 96, 8, 32, rect=True, pad=0.5, data=data, verbose=False)
    imgs, targets, paths, shapes = next(iter(loader))
    record = {r.im_file: r for r in dataset.records}[paths[1]]
    from_record = val.image_ground_truth(record, None, imgs.shape[2:], *shapes[1], single_cls=False)
    from_targets = val.image_ground_truth(None, targets[targets[:, 0] == 1], imgs.shape[2:], *shapes[1],
                                          single_cls=False)
    assert len(from_record.cls) == len(from_targets.cls) > 0
    assert (from_record.cls == from_targets.cls).all()
    assert np.abs(from_record.boxes - from_targets.boxes).max() < 2.0  # pixels, through a 96-pixel letterbox


@needs_voc
def test_val_voc_prints_devkit_ap50(tmp_path, capsys):
    data = {'path': str(VOC.resolve()), 'format': 'voc', 'eval': 'voc07', 'names': VOC_NAMES,
            'train': 'VOC2007/ImageSets/Main/trainval.txt', 'val': 'VOC2007/ImageSets/Main/test.txt'}
    weights = save_model(chatty_model(20), tmp_path / 'voc.pt')
    (p, r, map50, map_, *_), maps, _ = val.run(data=data, weights=weights, imgsz=64, device='cpu', workers=0,
                                               save_dir=tmp_path / 'run', plots=False)
    out = capsys.readouterr().out
    assert 'VOC devkit AP50 (VOC2007 11-point, difficult ignored): mAP' in out
    assert maps.shape == (20,)


@needs_coco64
def test_val_task_speed_and_errors(tmp_path, capsys):
    weights = save_model(chatty_model(80), tmp_path / 'm.pt')
    val.run(data=str(COCO64_YAML), weights=weights, imgsz=64, task='speed', device='cpu', workers=0,
            project=tmp_path, name='speed')
    out = capsys.readouterr().out
    assert 'ms pre-process' in out and 'ms inference' in out and 'ms NMS per image at imgsz 64' in out
    assert 'ms total' in out and not (tmp_path / 'speed' / 'confusion_matrix.png').exists()
    with pytest.raises(SystemExit, match='error: .*missing.pt: .*not found'):
        val.main(['--weights', str(tmp_path / 'missing.pt'), '--data', str(COCO64_YAML), '--project', str(tmp_path)])
    with pytest.raises(SystemExit, match='error: .*m3.pt: model has 3 classes but the data has 80'):
        val.main(['--weights', str(save_model(chatty_model(3), tmp_path / 'm3.pt')), '--data', str(COCO64_YAML),
                  '--project', str(tmp_path), '--device', 'cpu'])
    with pytest.raises(SystemExit, match="error: .*no 'test' images"):
        val.main(['--weights', str(weights), '--data', str(COCO64_YAML), '--task', 'test', '--device', 'cpu',
                  '--project', str(tmp_path)])
    with pytest.raises(SystemExit):
        val.main(['--task', 'bogus'])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --task: invalid choice: 'bogus'")


@needs_voc
def test_val_single_cls_save_json_builds_ground_truth_with_unique_ids(tmp_path, capsys):
    # VOC2007/000001.jpg and VOC2012/000001.jpg share a stem: the JSON ids must still be distinct
    data = {'path': str(VOC.resolve()), 'format': 'voc', 'eval': 'voc12', 'names': VOC_NAMES,
            'train': 'VOC2007/ImageSets/Main/trainval.txt',
            'val': ['VOC2007/ImageSets/Main/test.txt', 'VOC2012/ImageSets/Main/test.txt']}
    weights = save_model(chatty_model(20, classes=(11, 14)), tmp_path / 'voc.pt')
    (p, r, map50, map_, *_), maps, _ = val.run(data=data, weights=weights, imgsz=64, device='cpu', workers=0,
                                               single_cls=True, save_json=True, save_dir=tmp_path / 'run')
    gt = json.loads((tmp_path / 'run/ground_truth_from_labels.json').read_text())
    assert sorted(im['id'] for im in gt['images']) == [1, 2] and len(gt['annotations']) == 3
    assert {a['category_id'] for a in gt['annotations']} == {0} and maps.shape == (1,)
    _, ours_coco, coco = side_by_side(capsys.readouterr().out, 'mAP50-95')
    assert abs(ours_coco - coco) < 1e-3
