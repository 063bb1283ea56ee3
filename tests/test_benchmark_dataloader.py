"""benchmarks/dataloader.py: loader images/s beside the training step's, and whether the loader keeps up."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
from dataloader import run, workers_to_keep_up  # noqa: E402


def test_workers_to_keep_up_is_the_fewest_fast_enough_worker_count():
    rows = [{'loader': 'train mosaic', 'workers': w, 'img_per_s': ips} for w, ips in ((0, 50), (2, 90), (4, 160))]
    rows.append({'loader': 'val rect', 'workers': 0, 'img_per_s': 999})  # never counted: it is not the train loader
    assert workers_to_keep_up(rows, 80) == 2
    assert workers_to_keep_up(rows, 40) == 0
    assert workers_to_keep_up(rows, 500) is None


@pytest.mark.slow
def test_table_and_json_have_loader_and_step_rows(tiny_shapes, tmp_path, capsys):
    out = tmp_path / 'dl.json'
    run(tiny_shapes, imgsz=64, batch_size=2, workers=(0,), batches=1, json_path=out, step_freeze=('10',),
        step_cfg='v6/yolov5n.yaml')
    d = json.loads(out.read_text())
    assert [r['loader'] for r in d['results']] == ['train mosaic', 'val rect']
    assert all(r['img_per_s'] > 0 for r in d['results'])
    (step,) = d['steps']
    assert step['freeze'] == '10' and step['step_img_per_s'] > 0
    assert step['workers_to_keep_up'] == workers_to_keep_up(d['results'], step['step_img_per_s'])
    assert 'loader keeps up with' in capsys.readouterr().out
