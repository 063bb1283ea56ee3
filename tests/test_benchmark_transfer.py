"""benchmarks/transfer.py (the freeze study): settings, curves read by column name, the Markdown table."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from utils.eval.results_csv import append_row

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('transfer_study', ROOT / 'benchmarks' / 'transfer.py')
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_settings_built_in_custom_and_unknown():
    got = study.parse_settings(['freeze10-unfreeze', 'mapping-off', 'f5:--freeze 5 --cos-lr'], 20, 'off.yaml')
    assert got == [('freeze10-unfreeze', ['--freeze', '10', '--unfreeze-epoch', '10']),
                   ('mapping-off', ['--freeze', '10', '--data', 'off.yaml']),
                   ('f5', ['--freeze', '5', '--cos-lr'])]
    assert study.DEFAULT_SETTINGS == ['freeze0', 'freeze10', 'freeze10-bn-upstream', 'all-but-detect',
                                      'freeze10-unfreeze', 'mapping-off']
    with pytest.raises(ValueError, match='--settings freeze99: unknown'):
        study.parse_settings(['freeze99'], 20, 'off.yaml')


def test_curve_and_table(tmp_path):
    csv = tmp_path / 'results.csv'
    for epoch, m50, m in ((-1, 0.56, 0.37), (0, 0.55, 0.36), (1, 0.58, 0.38), (2, 0.57, 0.39)):
        append_row(csv, {'epoch': epoch, 'metrics/mAP_0.5': m50, 'metrics/mAP_0.5:0.95': m})
    curve = study.read_curve(csv)
    assert curve == [(-1, 0.56, 0.37), (0, 0.55, 0.36), (1, 0.58, 0.38), (2, 0.57, 0.39)]
    row = {'setting': 'freeze10', 'zero_shot_map50': 0.56, 'zero_shot_map': 0.37, 'final_map50': 0.57,
           'final_map': 0.39, 'best_map50': 0.58, 'best_epoch': 1, 'wall_s': 100.0, 's_per_epoch': 5.0,
           'peak_rss_mb': 1500.0, 'peak_cuda_mb': None, 'curve': curve}
    opt = SimpleNamespace(weights='w/yolov5n.pt', data='d/set.yaml', epochs=3, imgsz=320, batch_size=16, seed=0,
                          hyp=None, device='cpu', jobs=1)
    table = study.markdown_table([{**row, 's_per_epoch': 10.0, 'setting': 'freeze0'}, row], opt)
    assert table.startswith('yolov5n.pt on set.yaml: 3 epochs, 320 px, batch 16')
    assert '| freeze10 | 0.560 | 0.370 | 0.570 | 0.390 | 0.580 (2) | 100 | 5.0 | 2.00x | 1,500 |' in table
    assert study.plot_curves([row], tmp_path / 'c.png').is_file()
