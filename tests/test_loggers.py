"""TensorBoard logger: scalars and images read back from the events file; off in one line without the package."""
import math
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from utils.eval.report import epoch_row
from utils.train.callbacks import TensorBoardLogger


def read_events(log_dir):
    accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    acc = accumulator.EventAccumulator(str(log_dir), size_guidance={'images': 0, 'scalars': 0})
    acc.Reload()
    return acc


def test_scalars_baseline_and_images_read_back(tmp_path):
    pytest.importorskip('torch.utils.tensorboard', reason='tensorboard not installed')
    lines = []
    tb = TensorBoardLogger.open(tmp_path / 'exp', log=lines.append)
    assert tb.enabled and 'tensorboard --logdir' in lines[0] and str(tmp_path) in lines[0]
    tb.log_baseline({'p': 0.4, 'r': 0.3, 'map50': 0.25, 'map': 0.125})
    for epoch in range(2):
        tb.log_epoch({'epoch': epoch, 'train/box_loss': 0.1 * (epoch + 1), 'metrics/mAP_0.5': 0.5 + epoch / 10,
                      'x/lr0': 0.01, 'x/lr1': math.nan})  # NaN: a parameter kind with nothing trainable
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 2] = 255  # red in BGR
    cv2.imwrite(str(tmp_path / 'batch.png'), image)
    assert tb.log_image('train/batch0', tmp_path / 'batch.png')
    assert not tb.log_image('val/PR_curve', tmp_path / 'missing.png')
    tb.close()

    acc = read_events(tmp_path / 'exp')
    tags = acc.Tags()
    assert set(tags['scalars']) == {'train/box_loss', 'metrics/mAP_0.5', 'x/lr0', 'baseline/precision',
                                    'baseline/recall', 'baseline/mAP_0.5', 'baseline/mAP_0.5:0.95'}
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars('metrics/mAP_0.5')] == [(0, 0.5), (1, 0.6)]
    assert [round(e.value, 5) for e in acc.Scalars('baseline/mAP_0.5:0.95')] == [0.125]
    assert tags['images'] == ['train/batch0']
    encoded = acc.Images('train/batch0')[0]
    decoded = cv2.imdecode(np.frombuffer(encoded.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert (encoded.width, encoded.height) == (30, 20)
    assert decoded[0, 0].tolist() == [0, 0, 255]  # colours survive the BGR -> RGB -> PNG round trip


def test_baseline_from_an_object_with_attributes(tmp_path):
    pytest.importorskip('torch.utils.tensorboard', reason='tensorboard not installed')

    class Result:
        p, r, map50, map = 0.9, 0.8, 0.7, 0.6

    tb = TensorBoardLogger.open(tmp_path, log=lambda *a: None)
    tb.log_baseline(Result())
    tb.close()
    assert round(read_events(tmp_path).Scalars('baseline/mAP_0.5')[0].value, 5) == 0.7


def test_epochs_val_every_skipped_log_train_losses_and_no_metrics(tmp_path):
    """The metric curves get a point at validated epochs only (a skipped epoch's row has no metric cells)."""
    pytest.importorskip('torch.utils.tensorboard', reason='tensorboard not installed')
    result = SimpleNamespace(p=0.5, r=0.25, map50=0.4, map=0.2, losses=(0.1, 0.2, 0.3))
    tb = TensorBoardLogger.open(tmp_path, log=lambda *a: None)
    for epoch in range(3):
        tb.log_epoch(epoch_row(epoch, (1.0, 2.0, 3.0), result, [{'name': 'decay', 'lr': 0.01}],
                               validated=epoch % 2 == 1))
    tb.close()
    acc = read_events(tmp_path)
    assert [e.step for e in acc.Scalars('metrics/mAP_0.5')] == [1]
    assert [e.step for e in acc.Scalars('val/box_loss')] == [1]
    assert [e.step for e in acc.Scalars('train/box_loss')] == [0, 1, 2]


def test_without_tensorboard_one_line_and_nothing_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # import now raises ImportError
    lines = []
    tb = TensorBoardLogger.open(tmp_path / 'exp', log=lines.append)
    assert not tb.enabled
    assert lines == ['TensorBoard: off (pip install tensorboard to log this run)']
    tb.log_epoch({'epoch': 0, 'metrics/mAP_0.5': 0.5})
    tb.log_baseline({'map50': 0.1})
    assert not tb.log_image('train/batch0', tmp_path / 'x.png')
    tb.close()
    assert not (tmp_path / 'exp').exists()


@pytest.mark.slow
def test_the_writer_thread_ends_when_a_run_raises(tiny_data, tmp_path):
    """A run that stops by an exception (Ctrl-C, a pruned --evolve trial) still closes its TensorBoard writer,
    whose background thread would otherwise live on for the rest of the process."""
    import threading

    import train
    pytest.importorskip('tensorboard')
    before = set(threading.enumerate())
    opt = train.parse_opt(['--data', str(tiny_data), '--cfg', 'v6/yolov5n.yaml', '--imgsz', '64', '--epochs', '2',
                           '--batch-size', '8', '--workers', '0', '--noplots', '--project', str(tmp_path)])

    def stop_after_first_epoch(epoch, fitness):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.main(opt, on_epoch_end=stop_after_first_epoch)
    assert any((tmp_path / 'exp').glob('events.out.tfevents.*'))
    new = [t for t in set(threading.enumerate()) - before if t.name != 'tqdm_monitor']  # tqdm's own daemon
    assert not new, new
