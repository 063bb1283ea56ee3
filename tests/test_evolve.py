"""train.py --evolve: the search space and its narrowing, tiny real studies (pruning, resume, two processes on
one SQLite file), and the one-line error without optuna."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import train
from utils.data.config import load_hyp
from utils.evolve.study import make_pruner, run_evolve
from utils.evolve.space import HYP_RANGES, build_space, recipe, suggest

optuna = pytest.importorskip('optuna', reason='optuna is an optional dependency (requirements-extra.txt)')

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--cfg', 'v6/yolov5n.yaml', '--imgsz', '64', '--batch-size', '8', '--workers', '0', '--noautoanchor']


def options(*argv):
    return train.fill_defaults(train.parse_opt(list(argv)))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# --- the search space ---

def space_for(*items, weights='yolov5n.pt', epochs=10):
    opt = options('--data', 'x.yaml', '--epochs', str(epochs), '--weights', weights)
    return build_space(load_hyp(None), opt, list(items))


def test_default_space_has_upstream_ranges_and_freezing():
    space = space_for()
    assert (space['lr0'].low, space['lr0'].high, space['lr0'].log) == (1e-5, 1e-1, True)
    assert set(HYP_RANGES) <= set(space) and space['mosaic'].kind == 'float'
    assert set(space['freeze'].choices) == {'0', 'backbone', '10', 'all'}
    assert space['freeze_bn_stats'].choices == ('true', 'false', 'all')
    assert (space['unfreeze_epoch'].low, space['unfreeze_epoch'].high) == (-1, 9)
    scratch = space_for(weights='')  # from scratch: freezing is not searched unless asked
    assert scratch['freeze'].kind == 'fixed' and scratch['freeze'].value == '0'
    asked = space_for('freeze=0,backbone', 'unfreeze_epoch=-1:4', weights='')
    assert asked['freeze'].choices == ('0', 'backbone')
    assert (asked['unfreeze_epoch'].kind, asked['unfreeze_epoch'].low, asked['unfreeze_epoch'].high) == ('int', -1, 4)


def test_narrowing_flags_and_yaml(tmp_path):
    spec = tmp_path / 'space.yaml'
    spec.write_text('translate: [0.05, 0.2]\nfreeze: [0, backbone, [0, 1, 2]]\nfreeze_bn_stats: true\n')
    space = space_for('lr0=0.001:0.02', 'mosaic=1.0', 'unfreeze_epoch=-1,3', str(spec))
    assert (space['lr0'].low, space['lr0'].high) == (0.001, 0.02)
    assert space['mosaic'].kind == 'fixed' and space['mosaic'].value == 1.0
    assert (space['translate'].low, space['translate'].high) == (0.05, 0.2)
    assert space['freeze'].choices == ('0', 'backbone', '0 1 2')
    assert space['freeze_bn_stats'].kind == 'fixed' and space['freeze_bn_stats'].value == 'true'
    study = optuna.create_study(direction='maximize', sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        values = suggest(space, study.ask())
        assert 0.001 <= values['lr0'] <= 0.02 and values['mosaic'] == 1.0
        assert values['freeze'] in ('0', 'backbone', '0 1 2') and values['unfreeze_epoch'] in (-1, 3)
        if values['freeze'] == '0':  # nothing frozen: no BatchNorm choice, no unfreeze epoch
            assert values['unfreeze_epoch'] == -1


def test_search_only_fixes_the_rest_at_the_base_recipe():
    space = space_for('search=lr0,freeze', 'freeze=0,backbone')
    varying = [k for k, p in space.items() if p.kind != 'fixed']
    assert sorted(varying) == ['freeze', 'lr0']  # BatchNorm choice and unfreeze epoch: the base's
    assert space['scale'].kind == 'fixed' and space['scale'].value == 0.5  # hyp.scratch.yaml's value
    assert recipe(space, {'lr0': 0.003, 'freeze': '0'})['scale'] == 0.5


@pytest.mark.parametrize('item, message', [
    ('lr=0.1', "unknown key 'lr'"), ('lr0=0.1:0.01', 'low is above high'),
    ('unfreeze_epoch=12', 'unfreeze_epoch 12'), ('freeze_bn_stats=maybe', 'expected true, false or all'),
    ('mosaic=lots', 'expected a number'), ('freeze=0:10', 'takes choices'), ('missing.yaml', 'no such file'), ('search=lr0,nope', 'unknown key')])
def test_bad_narrowing_is_one_clear_line(item, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        space_for(item)
    assert '\n' not in str(e.value)


def test_pruner_choices():
    assert isinstance(make_pruner(optuna, 'median', 10), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(optuna, 'threshold=0.2', 10), optuna.pruners.ThresholdPruner)
    assert isinstance(make_pruner(optuna, 'none', 10), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match='--evolve-pruner'):
        make_pruner(optuna, 'threshold=high', 10)


@pytest.mark.slow
def test_missing_optuna_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, 'optuna', None)  # `import optuna` now raises ImportError
    with pytest.raises(SystemExit) as e:
        train.cli(['--evolve', '2', '--project', str(tmp_path)])
    assert str(e.value.code) == 'error: --evolve needs the optuna package: pip install optuna'
    assert not list(tmp_path.iterdir())  # nothing started


# --- tiny real studies ---

class PruneTrialOne(optuna.pruners.BasePruner):
    """Deterministic pruning for the test: trial 1 stops at its first report, the others never."""

    def prune(self, study, trial):
        return trial.number == 1


@pytest.mark.slow
def test_tiny_study_three_trials_one_pruned(tiny_data, tmp_path):
    opt = options('--data', str(tiny_data), *TINY, '--epochs', '2', '--evolve', '3', '--project', str(tmp_path),
                  '--evolve-space', 'search=lr0,mosaic', 'lr0=0.001:0.005', 'mosaic=0,1')
    out = run_evolve(opt, train.main, vars(train.parse_opt([])), pruner=PruneTrialOne())
    run_dir = tmp_path / 'exp'
    rows = read_csv(run_dir / 'evolve.csv')
    assert [r['state'] for r in rows] == ['complete', 'pruned', 'complete']
    assert [int(r['epochs_run']) for r in rows] == [2, 1, 2]
    assert rows[0]['baseline'] == 'True' and float(rows[0]['lr0']) == 0.005  # base 0.01, clipped into the range
    for r in rows:
        assert 0.001 <= float(r['lr0']) <= 0.005 and r['mosaic'] in ('0', '1') and float(r['seconds']) > 0
        trial_hyp = yaml.safe_load((run_dir / 'trials' / f"{int(r['trial']):03d}" / 'hyp.yaml').read_text())
        assert trial_hyp['lr0'] == pytest.approx(float(r['lr0']), rel=1e-4)  # the CSV keeps 6 digits
        assert trial_hyp['scale'] == 0.5  # not searched: the base recipe's
    assert out['savings']['epochs_saved'] == 1 and out['savings']['pruned'] == 1
    assert out['savings']['epochs_run'] == 5 and out['savings']['epochs_full'] == 6
    best = max((r for r in rows if r['state'] == 'complete'), key=lambda r: float(r['fitness']))
    evolved = load_hyp(run_dir / 'hyp_evolved.yaml')  # ready for --hyp: every key there
    assert evolved['lr0'] == pytest.approx(float(best['lr0']), rel=1e-4) and evolved['scale'] == 0.5
    text = (run_dir / 'evolve.txt').read_text()
    assert f"best: trial {best['trial']}" in text and 'saved 1 epochs' in text
    assert out['command'].startswith('python train.py') and f"--hyp {run_dir / 'hyp_evolved.yaml'}" in out['command']
    assert '--evolve' not in out['command'] and (run_dir / 'evolve.png').stat().st_size > 0
    parsed = train.parse_opt(out['command'].split()[2:])  # the command parses back to the trial's options
    assert parsed.data == str(tiny_data) and parsed.epochs == 2 and parsed.noautoanchor


@pytest.mark.slow
def test_interrupted_study_resumes(tiny_data, tmp_path):
    argv = ('--data', str(tiny_data), *TINY, '--epochs', '1', '--evolve', '2', '--project', str(tmp_path),
            '--evolve-space', 'search=lr0')
    seen = {}

    def interrupt_trial_one(opt, callbacks):
        def hook(epoch, fit):
            seen[opt.name] = fit
            if opt.name == '001':
                raise KeyboardInterrupt  # as Ctrl-C during trial 1
        return train.main(opt, callbacks, on_epoch_end=hook)  # the trial's pruner reports first

    with pytest.raises(KeyboardInterrupt):
        run_evolve(options(*argv), interrupt_trial_one, {})
    run_dir = tmp_path / 'exp'
    assert [r['state'] for r in read_csv(run_dir / 'evolve.csv')] == ['complete', 'fail']
    train.run(resume=True, evolve=2, project=str(tmp_path), device='cpu')  # --evolve --resume: the latest study
    study = optuna.load_study(study_name='exp', storage=f'sqlite:///{run_dir / "study.db"}')
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ['COMPLETE', 'FAIL', 'COMPLETE']
    assert trials[2].user_attrs['retry_of'] == 1 and trials[2].params == trials[1].params  # same recipe rerun
    # the rerun, after another trial and in a new study session, trains exactly as the interrupted one had
    assert trials[2].intermediate_values[0] == pytest.approx(seen['001'], abs=1e-9)
    train.run(resume=str(run_dir), evolve=2, project=str(tmp_path))  # already at its target: nothing more
    assert len(study.get_trials()) == 3


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tiny_data, tmp_path):
    db = tmp_path / 'shared.db'
    procs = [subprocess.Popen(
        [sys.executable, 'train.py', '--data', str(tiny_data), *TINY, '--epochs', '1', '--evolve', '1',
         '--evolve-storage', f'sqlite:///{db}', '--name', 'shared', '--project', str(tmp_path / f'machine{i}'),
         '--evolve-space', 'search=lr0'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-2000:]
    study = optuna.load_study(study_name='shared', storage=f'sqlite:///{db}')
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1] and all(t.state.name == 'COMPLETE' for t in trials)
    assert sum(bool(t.user_attrs.get('baseline')) for t in trials) == 1  # one base-recipe trial, not one each
    assert not (tmp_path / 'machine0' / 'shared' / 'study.db').exists()  # the study is in the shared database
    rows = max((read_csv(tmp_path / f'machine{i}' / 'shared' / 'evolve.csv') for i in range(2)), key=len)
    assert len(rows) == 2  # the last process to finish lists both processes' trials


def test_evolve_refuses_ddp(monkeypatch, tmp_path):
    monkeypatch.setenv('WORLD_SIZE', '2')
    opt = options('--evolve', '1', '--project', str(tmp_path))
    with pytest.raises(ValueError, match='--evolve-storage'):
        run_evolve(opt, train.main, {})


def test_bad_space_flag_from_the_cli_is_one_line_and_starts_nothing(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        train.cli(['--evolve', '2', '--project', str(tmp_path), '--evolve-space', 'lr0=0.1:0.01'])
    assert str(e.value.code).startswith('error: --evolve-space: lr0=0.1:0.01: low is above high')
    assert not list(tmp_path.iterdir())
