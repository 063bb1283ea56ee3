"""train.py --val-every K: which epochs are validated (utils/train/config.py), the flag, and runs with it."""
import argparse
import contextlib
import io
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import train
from utils.eval.report import COLUMNS, read_rows
from utils.train import trainer
from utils.train.config import is_validated, parse_val_every, schedule_note, val_interval
from utils.weights.checkpoint import load_checkpoint


@pytest.mark.parametrize('epochs, interval', [(1, 1), (3, 1), (10, 1), (11, 1), (19, 1), (20, 2), (35, 3),
                                              (50, 5), (100, 5), (300, 5)])
def test_auto_validates_every_epoch_up_to_10_then_every_min_5_epochs_over_10(epochs, interval):
    assert val_interval('auto', epochs) == interval


def test_a_given_interval_is_kept_whatever_the_length():
    assert val_interval(1, 300) == 1 and val_interval('3', 5) == 3 and val_interval(7, 50) == 7
    assert parse_val_every(' Auto ') == 'auto' and parse_val_every('12') == 12 and parse_val_every(4) == 4


@pytest.mark.parametrize('value', ['0', 0, '-3', -3, 'abc', '', '2.5', 2.5, True, None])
def test_bad_values_are_refused(value):
    with pytest.raises(ValueError, match="expected a positive integer or 'auto'"):
        parse_val_every(value)


def test_validated_epochs_are_every_kth_counted_from_one_and_the_last():
    assert [e for e in range(3) if is_validated(e, 2, 3)] == [1, 2]
    assert [e for e in range(20) if is_validated(e, 2, 20)] == list(range(1, 20, 2))
    assert [e for e in range(12) if is_validated(e, 5, 12)] == [4, 9, 11]
    assert all(is_validated(e, 1, 4) for e in range(4))


def test_the_start_line_says_the_interval_and_how_to_validate_every_epoch():
    assert schedule_note('auto', 20) == ('val: every 2 epochs (--val-every auto for a 20-epoch run; '
                                         '--val-every 1 validates every epoch)')
    assert schedule_note(2, 3) == ('val: every 2 epochs and the last (--val-every 2; '
                                   '--val-every 1 validates every epoch)')
    assert schedule_note('auto', 10) is None and schedule_note(1, 300) is None


# ---------------------------------------------------------------- the flag
@pytest.mark.parametrize('value', ['0', '-3', 'abc'])
def test_a_bad_flag_value_is_one_argparse_line_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_opt(['--val-every', value])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and 'Traceback' not in err
    assert err.startswith('error: argument --val-every: ') and f"got '{value}'" in err


def test_a_bad_value_from_python_is_refused_before_anything_is_built():
    opt = train.fill_defaults(train.parse_opt(['--data', 'x.yaml']))
    assert opt.val_every == 'auto' and train.parse_opt(['--val-every', '3']).val_every == 3
    opt.val_every = 0  # train.run(val_every=0) skips argparse
    with pytest.raises(ValueError, match="^--val-every 0: expected a positive integer or 'auto'"):
        train.check_options(opt, world_size=1)


# ---------------------------------------------------------------- runs
FLAGS = ['--cfg', 'v6/yolov5n.yaml', '--imgsz', '64', '--batch-size', '8', '--workers', '0', '--noplots',
         '--noautoanchor']
METRIC_COLUMNS = COLUMNS[4:11]  # P, R, mAP50, mAP50-95, val losses
TRAIN_COLUMNS = COLUMNS[1:4] + COLUMNS[11:14]  # train losses, LRs


def train_run(data, project, name, *flags):
    """One in-process run; returns its folder, what it printed and the epochs it reported as validated."""
    opt = train.parse_opt(['--data', str(data), '--project', str(project), '--name', name, *FLAGS, *flags])
    validated, out = [], io.StringIO()
    with contextlib.redirect_stdout(out):
        train.main(opt, on_epoch_end=lambda epoch, fitness: validated.append(epoch))
    return Path(project) / name, out.getvalue(), validated


@pytest.fixture(scope='module')
def runs(tiny_shapes, tmp_path_factory):
    """The same 3-epoch run three times: without the flag (auto: every epoch), --val-every 1, --val-every 2."""
    project = tmp_path_factory.mktemp('val_every')
    return {name: train_run(tiny_shapes, project, name, '--epochs', '3', *flags)
            for name, flags in (('auto', []), ('every', ['--val-every', '1']),
                                ('skip', ['--val-every', '2', '--save-period', '1']))}


@pytest.mark.slow
def test_val_every_1_is_what_a_short_run_does_without_the_flag(runs):
    (auto, auto_out, auto_seen), (every, every_out, every_seen) = runs['auto'], runs['every']
    assert (auto / 'results.csv').read_text() == (every / 'results.csv').read_text()
    assert auto_seen == every_seen == [0, 1, 2] and 'val: every' not in auto_out + every_out
    rows = read_rows(every / 'results.csv')
    assert all(math.isfinite(r[c]) for r in rows for c in METRIC_COLUMNS)


@pytest.mark.slow
def test_val_every_2_validates_epochs_2_and_3_and_trains_the_same(runs):
    (skip, out, seen), (every, _, _) = runs['skip'], runs['every']
    assert seen == [1, 2] and out.count('val: every 2 epochs and the last (--val-every 2; ') == 1
    lines = (skip / 'results.csv').read_text().splitlines()
    first = dict(zip(COLUMNS, lines[1].split(',')))
    assert first['epoch'] == '0' and all(first[c] == '' for c in METRIC_COLUMNS) and first['train/box_loss']
    rows, ref = read_rows(skip / 'results.csv'), read_rows(every / 'results.csv')
    assert [r['epoch'] for r in rows] == [0, 1, 2]
    assert all(r[c] == s[c] for r, s in zip(rows, ref) for c in TRAIN_COLUMNS)  # training never sees validation
    assert all(r[c] == s[c] for r, s in zip(rows[1:], ref[1:]) for c in METRIC_COLUMNS)
    ema, ref_ema = (load_checkpoint(d / 'weights' / 'last.pt')['ema'] for d in (skip, every))
    assert all(torch.equal(v, ref_ema[k]) for k, v in ema.items())


@pytest.mark.slow
def test_best_pt_is_a_validated_epoch_and_resume_keeps_k(runs, monkeypatch):
    weights = runs['skip'][0] / 'weights'
    after_first = load_checkpoint(weights / 'epoch0.pt')  # saved at the end of epoch 1, not validated
    assert after_first['best_epoch'] == -1 and after_first['best_fitness'] == 0.0
    assert load_checkpoint(weights / 'best.pt')['epoch'] in (1, 2)
    where = argparse.Namespace(resume=str(weights / 'epoch0.pt'), device='', workers=0)
    opt, _ = train.resume_options(where)
    assert opt.val_every == 2 and yaml.safe_load((runs['skip'][0] / 'opt.yaml').read_text())['val_every'] == 2
    older = train.load_checkpoint  # a run saved before --val-every existed validated every epoch
    monkeypatch.setattr(train, 'load_checkpoint', lambda p: {**older(p), 'opt': {
        k: v for k, v in older(p)['opt'].items() if k != 'val_every'}})
    assert train.resume_options(where)[0].val_every == 1


@pytest.mark.slow
def test_early_stopping_waits_for_a_validated_epoch(runs, tiny_shapes, tmp_path, monkeypatch):
    """--patience 1, --val-every 2 on 5 epochs, fitness 0.5 at epoch 2, 0.4 at epoch 4: the unvalidated epoch 3
    cannot stop the run; epoch 4 does. The zero-shot row of the --weights start is there either way."""
    fitness = [0.5, 0.4, 0.3]
    fake = lambda run, session, final: SimpleNamespace(  # noqa: E731
        fitness=fitness.pop(0), p=0.1, r=0.1, map50=0.1, map=0.1, losses=(0.1, 0.1, 0.1))
    monkeypatch.setattr(trainer, 'validate_epoch', fake)
    start = runs['skip'][0] / 'weights' / 'last.pt'
    run_dir, out, seen = train_run(tiny_shapes, tmp_path, 'stop', '--weights', str(start), '--epochs', '5',
                                   '--val-every', '2', '--patience', '1')
    rows = read_rows(run_dir / 'results.csv')
    assert [r['epoch'] for r in rows] == [-1, 0, 1, 2, 3] and seen == [1, 3]
    assert math.isfinite(rows[0]['metrics/mAP_0.5']) and math.isnan(rows[3]['metrics/mAP_0.5'])
    assert 'Early stopping: no improvement in 1 epochs (best epoch 2)' in out
    assert load_checkpoint(run_dir / 'weights' / 'best.pt')['epoch'] == 1
