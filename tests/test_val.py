"""val.py end to end on ../shared data with small models built here (tiny image sizes keep it fast)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import val
from models.yolo import Model
from utils.weights.checkpoint import FORMAT, save_checkpoint
from utils.eval.coco import coco80_to_coco91
from utils.data.config import check_dataset, load_hyp
from utils.data.datasets import create_dataloader
from utils.eval.evaluator import EvalConfig, evaluate, ground_truth
from utils.train.loss import ComputeLoss

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


@pytest.mark.slow
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


@pytest.mark.slow
@needs_coco64
@pytest.mark.skipif(not YOLOV5N.is_file(), reason='../shared/weights/yolov5n.pt not present')
def test_official_yolov5n_agrees_with_pycocotools(tmp_path, capsys):
    result = val.run(data=str(COCO64_YAML), weights=YOLOV5N, imgsz=160, device='cpu', save_json=True, plots=False,
                     save_dir=tmp_path)
    out = capsys.readouterr().out
    for metric, returned in (('mAP50-95', (result.map, result.coco_rules_map, result.pycocotools_map)),
                             ('mAP50', (result.map50, result.coco_rules_map50, result.pycocotools_map50))):
        ours, ours_coco, coco = side_by_side(out, metric)
        assert (ours, ours_coco, coco) == pytest.approx(returned, abs=5e-5)  # printed = returned, by name
        assert abs(ours_coco - coco) < 1e-4 and abs(ours - coco) < 5e-3
    assert result.map > 0.15 and result.seen == 64  # real detections (0.205 at imgsz 160; 0.42 at 640)


@needs_coco64
def test_evaluate_as_the_trainer_calls_it(tmp_path):
    data = check_dataset(str(COCO64_YAML))
    model = chatty_model(80).train()
    loader, dataset = create_dataloader(data['val'], 64, 32, 32, data=data, rect=True, pad=0.5, verbose=False)
    compute_loss = ComputeLoss(model, load_hyp())
    result = evaluate(model, loader, EvalConfig.for_data(data, half=True), compute_loss=compute_loss)
    assert model.training  # back in the mode it came in
    assert all(v > 0 for v in result.losses) and result.losses == (result.box_loss, result.obj_loss, result.cls_loss)
    assert result.maps.shape == (80,) and result.seen == 64 and result.instances.sum() == 423
    assert all(t >= 0 for t in (result.speed.preprocess, result.speed.inference, result.speed.nms))
    assert 0 <= result.map <= result.map50 <= 1 and 0 <= result.p <= 1 and 0 <= result.r <= 1
    assert result.fitness == pytest.approx(0.1 * result.map50 + 0.9 * result.map)
    assert result.confusion is None and result.voc_ap is None and result.coco_rules_map is None  # not asked for


@pytest.mark.slow
@needs_coco64
def test_evaluate_seams_plain_forward_and_postprocess():
    """A plain callable stands in for the model (an exported one would); a post-NMS hook remaps classes."""
    data = check_dataset(str(COCO64_YAML))
    model = chatty_model(80).eval()
    loader, _ = create_dataloader(data['val'], 64, 32, 32, data=data, rect=True, pad=0.5, verbose=False)
    config = EvalConfig.for_data(data)
    base = evaluate(model, loader, config)
    plain = evaluate(lambda x: model(x)[0], loader, config)  # decoded predictions only
    assert plain.map == base.map and plain.map50 == base.map50 and plain.box_loss == 0.0

    def everything_is_a_person(dets, metas):
        assert len(dets) == len(metas)
        return [torch.cat((d[:, :5], torch.zeros_like(d[:, 5:])), 1) for d in dets]

    merged = evaluate(model, loader, config, postprocess=everything_is_a_person)
    others = merged.per_class.classes != 0  # classes with ground truth other than person
    assert base.per_class.ap50[others].max() > 0 and (merged.per_class.ap50[others] == 0).all()


@needs_coco64
def test_ground_truth_from_targets_matches_records():
    data = check_dataset(str(COCO64_YAML))
    loader, dataset = create_dataloader(data['val'], 96, 8, 32, data=data, rect=True, pad=0.5, verbose=False)
    imgs, targets, paths, metas = next(iter(loader))
    meta = metas[1]
    assert dataset.records[meta.index].im_file == paths[1] and meta.image_id == int(Path(paths[1]).stem)
    from_record = ground_truth(dataset.records, meta, None, imgs.shape[2:], single_cls=False)
    from_targets = ground_truth(None, meta, targets[targets[:, 0] == 1], imgs.shape[2:], single_cls=False)
    assert len(from_record.cls) == len(from_targets.cls) > 0
    assert (from_record.cls == from_targets.cls).all()
    assert np.abs(from_record.boxes - from_targets.boxes).max() < 1.0  # pixels, through a 96-pixel letterbox


@needs_voc
def test_val_voc_prints_devkit_ap50(tmp_path, capsys):
    data = {'path': str(VOC.resolve()), 'format': 'voc', 'eval': 'voc07', 'names': VOC_NAMES,
            'train': 'VOC2007/ImageSets/Main/trainval.txt', 'val': 'VOC2007/ImageSets/Main/test.txt'}
    weights = save_model(chatty_model(20), tmp_path / 'voc.pt')
    result = val.run(data=data, weights=weights, imgsz=64, device='cpu', workers=0, save_dir=tmp_path / 'run',
                     plots=False)
    out = capsys.readouterr().out
    assert f'VOC devkit AP50 (VOC2007 11-point, difficult ignored): mAP {result.voc_map:.4f}' in out
    assert result.maps.shape == (20,) and result.voc_ap.shape == (20,)


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
    result = val.run(data=data, weights=weights, imgsz=64, device='cpu', workers=0, single_cls=True, save_json=True,
                     save_dir=tmp_path / 'run')
    gt = json.loads((tmp_path / 'run/ground_truth_from_labels.json').read_text())
    assert sorted(im['id'] for im in gt['images']) == [1, 2] and len(gt['annotations']) == 3
    assert {a['category_id'] for a in gt['annotations']} == {0} and result.maps.shape == (1,)
    _, ours_coco, coco = side_by_side(capsys.readouterr().out, 'mAP50-95')
    assert abs(ours_coco - coco) < 1e-3
