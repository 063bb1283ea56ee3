"""End-to-end training runs on a tiny generated dataset (64 px images, 1-2 epochs)."""
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from utils.data.config import load_hyp
from utils.weights.checkpoint import load_checkpoint
from utils.eval.report import COLUMNS, read_rows

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
pytestmark = pytest.mark.slow  # every test here trains (or starts train.py)
FAST = dict(cfg='v6/yolov5n.yaml', imgsz=64, batch_size=8, workers=0, noplots=True, exist_ok=False)


def run_train(tmp_path, data, name, **kw):
    opts = {**FAST, 'data': str(data), 'project': str(tmp_path / 'runs'), 'name': name, **kw}
    train.run(**opts)
    return tmp_path / 'runs' / name / 'weights'


def test_train_writes_run_folder(trained_run):
    run_dir, w = trained_run, trained_run / 'weights'
    for f in ('weights/last.pt', 'weights/best.pt', 'hyp.yaml', 'opt.yaml', 'results.csv', 'results.png',
              'labels.jpg', 'train_batch0.jpg'):
        assert (run_dir / f).is_file(), f
    ck = torch.load(w / 'last.pt', weights_only=True)  # plain tensors and Python types only
    assert ck['optimizer'] is None and ck['model'] is None and ck['ema'] is not None  # final: stripped
    assert ck['epoch'] == 0 and ck['names'] == ['circle', 'square', 'triangle', 'star']
    assert (run_dir / 'results.csv').read_text().splitlines()[0].startswith('epoch,train/box_loss')


def test_results_csv_has_one_header_when_unfreezing_changes_the_optimizer_groups(tiny_data, tmp_path):
    """--freeze all trains only the Detect head (no BatchNorm weights, so two optimizer groups); unfreezing at
    epoch 1 adds the others. Rows used to grow by a cell and results.png crashed reading them."""
    w = run_train(tmp_path, tiny_data, 'all', epochs=2, freeze=['all'], unfreeze_epoch=1, noplots=False,
                  noautoanchor=True)
    lines = (w.parent / 'results.csv').read_text().splitlines()
    assert lines[0].split(',') == list(COLUMNS) and len(lines) == 3
    rows = read_rows(w.parent / 'results.csv')
    assert [r['epoch'] for r in rows] == [0, 1] and all(len(line.split(',')) == len(COLUMNS) for line in lines)
    assert math.isnan(rows[0]['x/lr1']) and rows[1]['x/lr1'] >= 0  # BN weights: frozen, then trained
    assert rows[0]['x/lr0'] > 0 and rows[0]['x/lr2'] > 0 and rows[1]['metrics/mAP_0.5'] >= 0
    assert (w.parent / 'results.png').is_file() and (w / 'best.pt').is_file()


def test_freeze_10_keeps_frozen_tensors_bit_identical(tiny_shapes, trained_run, tmp_path):
    src = trained_run / 'weights' / 'last.pt'
    start = load_checkpoint(src)['ema']
    hyp = {**load_hyp('hyp.transfer.yaml'), 'ema_decay': 0.0, 'ema_tau': 0}  # the saved EMA is the model: every
    # trainable step shows (the recipe's EMA of decay 0.98 can average a small one below float32 resolution)
    w = run_train(tmp_path, tiny_shapes, 'ft', epochs=2, weights=str(src), freeze=['10'], freeze_bn_stats='true',
                  noautoanchor=True, hyp=hyp)
    end = load_checkpoint(w / 'last.pt')['ema']
    assert set(start) == set(end)
    changed_trainable = 0
    for k, v in start.items():
        if int(k.split('.')[1]) < 10:  # weights AND BatchNorm buffers of model.0-9
            assert torch.equal(v, end[k]), f'frozen {k} changed'
        elif k.endswith(('.weight', 'running_mean')):
            changed_trainable += not torch.equal(v, end[k])
    n_trainable = sum(1 for k in start if int(k.split('.')[1]) >= 10 and k.endswith(('.weight', 'running_mean')))
    assert changed_trainable == n_trainable


def test_pretrained_start_keeps_every_batchnorm_statistic_by_default(tiny_data, trained_run, tmp_path):
    """The VOC recipe: from --weights, trainable layers train their weights but keep the loaded BN statistics."""
    src = trained_run / 'weights' / 'last.pt'
    start = load_checkpoint(src)['ema']
    w = run_train(tmp_path, tiny_data, 'ft', epochs=2, weights=str(src), freeze=['10'], noautoanchor=True)
    end = load_checkpoint(w / 'last.pt')['ema']
    stats = [k for k in start if k.endswith(('running_mean', 'running_var'))]
    assert stats and all(torch.equal(start[k], end[k]) for k in stats)
    assert not torch.equal(start['model.13.cv1.conv.weight'], end['model.13.cv1.conv.weight'])


def test_upstream_bn_behaviour_is_opt_in(tiny_shapes, trained_run, tmp_path):
    src = trained_run / 'weights' / 'last.pt'
    start = load_checkpoint(src)['ema']
    w = run_train(tmp_path, tiny_shapes, 'up', epochs=1, weights=str(src), freeze=['10'], freeze_bn_stats='false',
                  noautoanchor=True)
    end = load_checkpoint(w / 'last.pt')['ema']
    assert torch.equal(start['model.0.conv.weight'], end['model.0.conv.weight'])
    assert not torch.equal(start['model.0.bn.running_mean'], end['model.0.bn.running_mean'])


def test_unfreeze_epoch_releases_backbone(tiny_data, trained_run, tmp_path):
    src = trained_run / 'weights' / 'last.pt'
    start = load_checkpoint(src)['ema']
    # an EMA that copies the model (decay 0): the saved EMA shows the released layers' few, small steps, which the
    # recipe's slow EMA (ema_decay 0.98) would average below float32 resolution
    hyp = {**load_hyp('hyp.transfer.yaml'), 'ema_decay': 0.0, 'ema_tau': 0}
    w = run_train(tmp_path, tiny_data, 'unf', epochs=2, weights=str(src), freeze=['backbone'], unfreeze_epoch=1,
                  close_mosaic=1, noautoanchor=True, hyp=hyp)
    end = load_checkpoint(w / 'last.pt')['ema']
    assert not torch.equal(start['model.0.conv.weight'], end['model.0.conv.weight'])


KILL_AT_EPOCH_END = """
import os, signal, sys
import train
epoch = int(sys.argv[1])
def kill(e, fitness):
    if e == epoch:  # last.pt of this epoch is on disk; die as a power cut would, with no clean-up
        os.kill(os.getpid(), signal.SIGKILL)
train.main(train.parse_opt(sys.argv[2:]), on_epoch_end=kill)
"""


def kill_after_epoch(tmp_path, data, name, epoch, extra=(), epochs=3):
    """Run train.py's main in a subprocess that SIGKILLs itself right after last.pt holds ``epoch``; returns
    last.pt. Killed from the epoch-end callback, not by polling the file: a poll can lose the race to a fast epoch."""
    args = ['--data', str(data), '--cfg', 'v6/yolov5n.yaml', '--epochs', str(epochs), '--imgsz', '64',
            '--batch-size', '8', '--workers', '0', '--noplots', '--project', str(tmp_path / 'runs'), '--name', name,
            *extra]
    proc = subprocess.run([sys.executable, '-c', KILL_AT_EPOCH_END, str(epoch), *args], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    last = tmp_path / 'runs' / name / 'weights' / 'last.pt'
    ck = load_checkpoint(last)
    assert ck['epoch'] == epoch and ck['optimizer'] is not None
    return last


def assert_same_ema(a, b, last_epoch=2):
    a, b = load_checkpoint(a), load_checkpoint(b)
    assert a['epoch'] == b['epoch'] == last_epoch
    for k in a['ema']:
        assert torch.equal(a['ema'][k], b['ema'][k]), k


def test_resume_after_sigkill_matches_uninterrupted(tiny_shapes, tmp_path):
    full = run_train(tmp_path, tiny_shapes, 'full', epochs=2)  # killed after epoch 0, resumed for epoch 1
    last = kill_after_epoch(tmp_path, tiny_shapes, 'killed', 0, epochs=2)
    train.run(resume=str(last), workers=0)
    assert_same_ema(full / 'last.pt', last, last_epoch=1)


def test_resume_after_unfreeze_epoch(tiny_data, tmp_path):
    extra = {'freeze': ['backbone'], 'unfreeze_epoch': 1}
    full = run_train(tmp_path, tiny_data, 'full', epochs=3, **extra)
    last = kill_after_epoch(tmp_path, tiny_data, 'killed', 1, ['--freeze', 'backbone', '--unfreeze-epoch', '1'])
    train.run(resume=str(last), workers=0)
    assert_same_ema(full / 'last.pt', last)


def test_single_class_training_keeps_every_image(tiny_data, tmp_path, capsys):
    w = run_train(tmp_path, tiny_data, 'one', epochs=1, single_cls=True)
    out = capsys.readouterr().out
    assert 'images/train: 16 images, 16 labels found, 0 missing, 0 empty, 0 corrupt' in out
    ck = load_checkpoint(w / 'last.pt')
    assert ck['nc'] == 1 and ck['names'] == ['item']


def test_resume_errors(trained_run, tmp_path):
    w = Path(shutil.copytree(trained_run, tmp_path / 'done')) / 'weights'  # a finished run (a copy: resume may write)
    with pytest.raises(ValueError, match='already finished'):
        train.run(resume=str(w / 'last.pt'))
    with pytest.raises(FileNotFoundError, match='no last.pt'):
        train.run(resume=True, project=str(tmp_path / 'empty'))


BAD_INPUT = [
    (['--freeze', 'heads'], "--freeze heads: expected a layer count"),
    (['--data', 'nope.yaml'], 'nope.yaml'),
    (['--hyp', 'nohyp.yaml'], 'nohyp.yaml: hyp file not found'),
    (['--weights', 'missing_weights.pt'], 'missing_weights.pt'),
    (['--batch-size', '0'], '--batch-size 0: must be at least 1'),
    (['--cache', 'tape'], '--cache tape'),
    (['--unfreeze-epoch', '3'], '--unfreeze-epoch 3: the run has only epochs 0-0'),
    (['--unfreeze-epoch', '0'], 'nothing is frozen'),
]


def bad_input_argv(data, tmp_path, args):
    return ['--data', str(data), '--cfg', 'v6/yolov5n.yaml', '--epochs', '1', '--imgsz', '64', '--workers', '0',
            '--noplots', '--project', str(tmp_path / 'runs'), *args]


def test_cli_bad_input_is_one_line(tiny_data, tmp_path):
    """The real train.py process: exit code, the error as stderr's last line, no traceback (one case; the others
    go through the same ``train.cli`` in this process, below)."""
    args, msg = BAD_INPUT[0]
    out = subprocess.run([sys.executable, 'train.py', *bad_input_argv(tiny_data, tmp_path, args)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert msg in last and 'Traceback' not in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize('args,msg', BAD_INPUT)
def test_cli_bad_input_is_one_line_in_process(tiny_data, tmp_path, capsys, args, msg):
    """``train.cli`` ends each with SystemExit: its text (or, from argparse, stderr) is the one line the process
    prints; any other exception (a traceback) fails the test."""
    with pytest.raises(SystemExit) as e:
        train.cli(bad_input_argv(tiny_data, tmp_path, args))
    code = e.value.code
    line = code if isinstance(code, str) else capsys.readouterr().err.strip()
    assert code != 0 and msg in line and '\n' not in line.strip(), line


@pytest.mark.skipif(not (SHARED / 'weights/yolov5n.pt').is_file(), reason='needs ../shared/weights/yolov5n.pt')
def test_finetune_from_official_weights(tiny_data, tmp_path, capsys):
    run_train(tmp_path, tiny_data, 'off', epochs=1, weights=str(SHARED / 'weights/yolov5n.pt'), freeze=['10'])
    out = capsys.readouterr().out
    assert 'Detect: box+obj rows of 3 anchors x 3 levels kept' in out
    assert 'Frozen tensors verified' in out


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    # frozen backbone released at epoch 1: DDP must be re-wrapped so the released layers' gradients are synced
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(free_port()),
           'train.py', '--data', str(tiny_data), '--cfg', 'v6/yolov5n.yaml', '--epochs', '2', '--imgsz', '64',
           '--freeze', 'backbone', '--unfreeze-epoch', '1', '--batch-size', '8',
           '--workers', '0', '--device', 'cpu', '--noplots', '--project', str(tmp_path / 'runs'), '--name', 'ddp']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ck = load_checkpoint(tmp_path / 'runs' / 'ddp' / 'weights' / 'last.pt')
    assert ck['epoch'] == 1 and not any(k.startswith('module.') for k in ck['ema'])
    assert 'unfroze all layers' in out.stdout and 'Frozen tensors verified' in out.stdout


@pytest.mark.skipif(not (SHARED / 'weights/yolov5n.pt').is_file() or not (SHARED / 'data/voc_fixture').is_dir(),
                    reason='needs ../shared/weights/yolov5n.pt and ../shared/data/voc_fixture')
def test_hero_command_on_voc_layout(tmp_path, capsys):
    """train.py --weights yolov5n.pt --data voc.yaml --freeze 10, on the two-image VOC fixture in voc.yaml's layout."""
    voc = (ROOT / 'data/voc.yaml').read_text().replace('path: ../datasets/VOC', f"path: {SHARED / 'data/voc_fixture'}")
    data = tmp_path / 'voc.yaml'
    data.write_text(voc)
    w = run_train(tmp_path, data, 'voc', epochs=1, batch_size=2, weights=str(SHARED / 'weights/yolov5n.pt'),
                  freeze=['10'], cfg='')
    out = capsys.readouterr().out
    assert 'Detect: box+obj rows of 3 anchors x 3 levels kept' in out and 'Frozen tensors verified' in out
    assert 'VOC devkit AP50 (VOC2007 11-point, difficult ignored)' in out
    ck = load_checkpoint(w / 'best.pt')
    assert ck['nc'] == 20 and ck['names'][14] == 'person' and ck['yaml']['backbone'][0][2] == 'Conv'
