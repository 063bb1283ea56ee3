"""The README's VOC fine-tune command as typed, from another working directory: ``python train.py --weights yolov5s.pt
--data voc.yaml --freeze 10`` (+ only what makes it one short CPU epoch), then val.py on its best.pt, and the same
command with a yolov5m.pt that is neither on disk nor downloadable.

data/voc.yaml is used unedited: its ``path: ../datasets/VOC`` is pointed at a small VOCdevkit under a temporary
datasets root by $YOLOV5_FREEZE_DATASETS (docs/datasets.md): VOC2007 trainval (16 ids) + test (8 ids) and a
VOC2012 trainval (8 other VOC2007 images filed under VOC2012: ../shared has no VOC2012, the layout is what is
tested), image and XML folders symlinked to ../shared/data/voc07mini. The network is blocked in every subprocess
(proxies at 127.0.0.1:9, which refuses), so nothing here can reach the internet.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
VOC07 = SHARED / 'data' / 'voc07mini' / 'VOCdevkit' / 'VOC2007'
YOLOV5S = SHARED / 'weights' / 'yolov5s.pt'
NO_NETWORK = {k: 'http://127.0.0.1:9' for k in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY')}
SHORT = ['--epochs', '1', '--imgsz', '160', '--batch-size', '8', '--workers', '0', '--device', 'cpu']

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (VOC07.is_dir() and YOLOV5S.is_file()),
                                 reason='needs ../shared/data/voc07mini and ../shared/weights/yolov5s.pt')]


@pytest.fixture(scope='module')
def hero(tmp_path_factory):
    """(datasets root, working dir holding yolov5s.pt, subprocess env, project dir) of the hero runs."""
    tmp = tmp_path_factory.mktemp('hero')
    trainval = (VOC07 / 'ImageSets' / 'Main' / 'trainval.txt').read_text().split()
    test = (VOC07 / 'ImageSets' / 'Main' / 'test.txt').read_text().split()
    lists = {'VOC2007': {'trainval': trainval[:16], 'test': test[:8]}, 'VOC2012': {'trainval': trainval[16:24]}}
    for year, splits in lists.items():
        folder = tmp / 'datasets' / 'VOC' / 'VOCdevkit' / year
        (folder / 'ImageSets' / 'Main').mkdir(parents=True)
        for d in ('JPEGImages', 'Annotations'):
            os.symlink(VOC07 / d, folder / d)
        for split, ids in splits.items():
            (folder / 'ImageSets' / 'Main' / f'{split}.txt').write_text(''.join(f'{i}\n' for i in ids))
    work = tmp / 'work'
    work.mkdir()
    os.symlink(YOLOV5S, work / 'yolov5s.pt')
    env = {**os.environ, **NO_NETWORK, 'no_proxy': '', 'NO_PROXY': '', 'OMP_NUM_THREADS': '1',
           'YOLOV5_FREEZE_DATASETS': str(tmp / 'datasets')}
    return tmp / 'datasets', work, env, tmp / 'runs'


def run(cmd, hero, timeout=300):
    _, work, env, _ = hero
    return subprocess.run([sys.executable, *cmd], cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def trained(hero):
    project = hero[3]
    proc = run([str(ROOT / 'train.py'), '--weights', 'yolov5s.pt', '--data', 'voc.yaml', '--freeze', '10', *SHORT,
                '--project', str(project)], hero)
    return proc, project / 'exp'


def test_hero_command_trains_from_the_coco_checkpoint(trained, hero):
    proc, run_dir = trained
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    datasets = hero[0]
    assert f'{datasets / "VOC" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "trainval.txt"}: 8 images' in out
    transfer = next(line for line in out.splitlines() if line.startswith('Transferred '))
    assert 'from yolov5s.pt' in transfer and 'class rows from the checkpoint for 20/20 classes' in transfer
    assert 'sofa <- couch' in out and 'tvmonitor <- tv' in out
    assert 'Frozen tensors verified' in out and 'Traceback' not in out
    trainval = (VOC07 / 'ImageSets' / 'Main' / 'trainval.txt').read_text().split()[:24]
    difficult = sum((VOC07 / 'Annotations' / f'{i}.xml').read_text().count('<difficult>1</difficult>') for i in trainval)
    assert difficult and f'keep_difficult 1: {difficult} VOC difficult boxes are trained on as objects' in out
    rows = list(csv.DictReader((run_dir / 'results.csv').open()))
    assert [r['epoch'] for r in rows] == ['-1', '0']  # the zero-shot row, then the one epoch
    for r in rows:
        assert 0 < float(r['metrics/voc_mAP_0.5']) <= 1  # the devkit AP50 column is filled, zero-shot included
    assert rows[0]['metrics/voc_mAP_0.5'] and not rows[0]['train/box_loss']
    assert (run_dir / 'weights' / 'best.pt').is_file() and (run_dir / 'weights' / 'last.pt').is_file()


def test_val_on_the_hero_best_pt_prints_the_devkit_line(trained, hero):
    proc, run_dir = trained
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    v = run([str(ROOT / 'val.py'), '--weights', str(run_dir / 'weights' / 'best.pt'), '--data', 'voc.yaml',
             '--imgsz', '160', '--device', 'cpu', '--workers', '0', '--project', str(hero[3] / 'val')], hero)
    assert v.returncode == 0, (v.stdout + v.stderr)[-3000:]
    assert 'VOC devkit AP50 (VOC2007 11-point, difficult ignored): mAP ' in v.stdout
    assert 'Zero-shot through a class mapping' not in v.stdout  # a fine-tuned model has the data's classes


def test_hero_command_without_network_fails_in_one_line(hero):
    _, work, _, project = hero
    assert not (work / 'yolov5m.pt').exists()
    proc = run([str(ROOT / 'train.py'), '--weights', 'yolov5m.pt', '--data', 'voc.yaml', '--freeze', '10', *SHORT,
                '--project', str(project / 'm')], hero, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if 'error' in line.lower()]
    assert len(errors) == 1 and errors[0].startswith('error: yolov5m.pt: ') and 'Traceback' not in proc.stderr
    assert 'download from https://github.com/ultralytics/yolov5/releases/download/v7.0/yolov5m.pt failed' in errors[0]
    assert f'put it at {work / "yolov5m.pt"}' in errors[0]
    assert not list(work.glob('yolov5m.pt*'))  # no partial download left behind
