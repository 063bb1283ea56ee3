"""The upstream YOLOv5 v7.0 hyp files load and hold the values tutorials expect."""
from pathlib import Path

import pytest
import yaml

from utils.data.datasets import load_hyp

HYPS = Path(__file__).resolve().parents[1] / 'data' / 'hyps'


@pytest.mark.parametrize('name', ['low', 'med', 'high'])
def test_scratch_hyps_load_with_every_key(name):
    hyp = load_hyp(HYPS / f'hyp.scratch-{name}.yaml')
    assert hyp['lr0'] == 0.01 and hyp['momentum'] == 0.937 and hyp['warmup_epochs'] == 3.0
    assert 'nbs' not in hyp  # upstream's nominal batch 64 applies


def test_med_and_high_differ_from_low_where_upstream_does():
    low, med, high = (load_hyp(HYPS / f'hyp.scratch-{n}.yaml') for n in ('low', 'med', 'high'))
    assert load_hyp(HYPS / 'hyp.scratch.yaml') == low
    changed = {k: (low[k], med[k]) for k in low if low[k] != med[k]}
    assert changed == {'lrf': (0.01, 0.1), 'cls': (0.5, 0.3), 'obj': (1.0, 0.7), 'scale': (0.5, 0.9),
                       'mixup': (0.0, 0.1)}
    assert {k: high[k] for k in high if high[k] != med[k]} == {'copy_paste': 0.1}


def test_a_bare_hyp_name_is_found_in_data_hyps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no such file here: the name is looked up in data/hyps/
    assert load_hyp('hyp.scratch-high.yaml')['copy_paste'] == 0.1
    with pytest.raises(FileNotFoundError, match='hyp.nothing.yaml'):
        load_hyp('hyp.nothing.yaml')


def test_keep_difficult_is_optional_and_checked(tmp_path):
    base = load_hyp(HYPS / 'hyp.scratch-low.yaml')
    assert 'keep_difficult' not in base  # upstream's rule: difficult boxes are left out of training
    assert load_hyp({**base, 'keep_difficult': 1})['keep_difficult'] == 1
    assert load_hyp(HYPS / 'hyp.transfer.yaml')['keep_difficult'] == 1  # the fine-tune recipe trains on them
    bad = tmp_path / 'my.yaml'
    bad.write_text(yaml.safe_dump({**base, 'keep_difficult': 'yes'}))
    with pytest.raises(ValueError, match=f"^{bad}: keep_difficult 'yes': expected 0"):
        load_hyp(bad)
