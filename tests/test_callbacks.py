"""Callbacks (utils/train/callbacks.py): the hooks a run fires, in order; a logger of one's own; MLflow against a
real local store, read back with MLflow's client; the one line when mlflow is missing."""
import builtins
import math

import pytest

import train
from utils.eval.report import read_rows
from utils.train.callbacks import HOOKS, Callback, Callbacks, MLflowLogger

TINY = ['--cfg', 'v6/yolov5n.yaml', '--imgsz', '64', '--batch-size', '8', '--workers', '0', '--noautoanchor',
        '--noplots']


class Recorder(Callback):
    """A logger of one's own: writes down every hook the run fires."""

    def __init__(self):
        self.events = []

    def on_run_start(self, run, state):
        self.events.append(('run_start', state.epoch))

    def on_first_batch(self, run, state, imgs, targets):
        self.events.append(('first_batch', tuple(imgs.shape[-2:])))

    def on_epoch_end(self, run, state, row, result):
        self.events.append(('epoch_end', row['epoch'], math.isfinite(row.get('metrics/mAP_0.5', math.nan))))

    def on_checkpoint_saved(self, run, state, path, best):
        self.events.append(('checkpoint_saved', path.name, best))

    def on_epoch_done(self, run, state, row, result):
        self.events.append(('epoch_done', row['epoch']))

    def on_run_end(self, run, state, result, error):
        self.events.append(('run_end', result is not None, error))


@pytest.fixture(scope='module')
def recorded(tiny_data, tmp_path_factory):
    project = tmp_path_factory.mktemp('callbacks')
    recorder = Recorder()
    opt = train.parse_opt(['--data', str(tiny_data), *TINY, '--epochs', '2', '--project', str(project)])
    train.main(opt, callbacks=[recorder])
    return recorder.events, project / 'exp'


@pytest.mark.slow
def test_a_run_fires_every_hook_in_order(recorded):
    events, run_dir = recorded
    assert [e[0] for e in events] == ['run_start', 'first_batch', 'epoch_end', 'checkpoint_saved', 'epoch_done',
                                      'epoch_end', 'checkpoint_saved', 'epoch_done', 'run_end']
    assert events[0] == ('run_start', 0) and events[1] == ('first_batch', (64, 64))
    assert events[2] == ('epoch_end', 0, True) and events[3] == ('checkpoint_saved', 'last.pt', True)  # first: best
    assert events[5] == ('epoch_end', 1, True) and events[-1] == ('run_end', True, None)
    assert [r['epoch'] for r in read_rows(run_dir / 'results.csv')] == [0, 1]  # the default callbacks ran too


@pytest.mark.slow
def test_a_callback_raising_ends_the_run_and_run_end_still_comes(tiny_data, tmp_path):
    class Stop(Callback):
        def on_epoch_done(self, run, state, row, result):
            raise KeyboardInterrupt

    recorder = Recorder()
    opt = train.parse_opt(['--data', str(tiny_data), *TINY, '--epochs', '2', '--project', str(tmp_path)])
    with pytest.raises(KeyboardInterrupt):
        train.main(opt, callbacks=[recorder, Stop()])
    assert recorder.events[-2] == ('epoch_done', 0)
    assert recorder.events[-1][:2] == ('run_end', False) and isinstance(recorder.events[-1][2], KeyboardInterrupt)


def test_run_end_reaches_every_callback_when_one_fails():
    seen = []

    class Broken(Callback):
        def on_run_end(self, run, state, result, error):
            raise RuntimeError('broken logger')

    class Closing(Callback):
        def on_run_end(self, run, state, result, error):
            seen.append('closed')

    with pytest.raises(RuntimeError, match='broken logger'):
        Callbacks([Broken(), Closing()]).fire('on_run_end', None, None, None, None)
    assert seen == ['closed']
    with pytest.raises(AttributeError, match='on_epoch_start'):
        Callbacks().fire('on_epoch_start')
    assert set(HOOKS) == {n for n in vars(Callback) if n.startswith('on_')}


def test_mlflow_off_without_the_env_var_or_flag(monkeypatch):
    monkeypatch.delenv('MLFLOW_TRACKING_URI', raising=False)
    assert MLflowLogger.from_environment(False) is None


def test_mlflow_missing_package_is_one_line(monkeypatch):
    monkeypatch.setenv('MLFLOW_TRACKING_URI', 'file:///nowhere')
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == 'mlflow' or name.startswith('mlflow.'):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_mlflow)
    lines = []
    assert MLflowLogger.from_environment(False, log=lines.append) is None
    assert lines == ['MLflow: off (MLFLOW_TRACKING_URI is set, but mlflow is not installed: pip install '
                     'mlflow-skinny)']


@pytest.mark.slow
def test_mlflow_logs_params_metrics_and_best_weights(tiny_data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip('mlflow', reason='mlflow is an optional extra: pip install mlflow-skinny')
    store = tmp_path / 'mlruns'
    monkeypatch.setenv('MLFLOW_TRACKING_URI', store.as_uri())  # MLflow's own variable turns the logger on
    monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')  # MLflow 3 keeps the file store behind this switch
    train.run(data=str(tiny_data), cfg='v6/yolov5n.yaml', imgsz=64, batch_size=8, workers=0, noautoanchor=True,
              noplots=True, epochs=2, project=str(tmp_path / 'runs'))
    client = mlflow.tracking.MlflowClient(store.as_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    got = runs[0]
    assert got.info.status == 'FINISHED' and got.info.run_name == 'exp'
    params = got.data.params
    assert params['epochs'] == '2' and params['imgsz'] == '64' and params['hyp.lr0'] == '0.01'
    history = client.get_metric_history(got.info.run_id, 'metrics/mAP_0.5')
    rows = read_rows(tmp_path / 'runs' / 'exp' / 'results.csv')
    assert [m.step for m in history] == [0, 1]
    assert [m.value for m in history] == pytest.approx([r['metrics/mAP_0.5'] for r in rows], rel=1e-3)
    assert [a.path for a in client.list_artifacts(got.info.run_id, 'weights')] == ['weights/best.pt']
