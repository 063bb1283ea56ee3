"""benchmarks/holdout.py: a hold-out split of a VOC training list that never contains a test id."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
from holdout import make_holdout, split_ids  # noqa: E402

from utils.data.config import check_dataset  # noqa: E402

VOC07MINI = ROOT.parent / 'shared' / 'data' / 'voc07mini' / 'voc07mini.yaml'


def test_split_ids_holds_out_every_nth_and_keeps_the_rest():
    train, held = split_ids([f'{i:06d}' for i in range(10, 0, -1)], every=3)
    assert held == ['000003', '000006', '000009']
    assert sorted(train + held) == [f'{i:06d}' for i in range(1, 11)] and not set(train) & set(held)


@pytest.mark.skipif(not VOC07MINI.is_file(), reason='../shared/data/voc07mini not present')
def test_holdout_yaml_splits_trainval_and_never_lists_a_test_id(tmp_path):
    path = make_holdout(VOC07MINI, tmp_path / 'split', every=5)
    d = check_dataset(path)
    train = Path(d['train'][0]).read_text().split()
    held = Path(d['val'][0]).read_text().split()
    src = check_dataset(VOC07MINI)
    trainval = set(Path(src['train'][0]).read_text().split())
    test = set(Path(src['val'][0]).read_text().split())
    assert (len(train), len(held)) == (470, 117) and set(train) | set(held) == trainval
    assert not (set(train) | set(held)) & test and not set(train) & set(held)
    assert d['eval'] == 'voc07' and d['names'] == src['names']
    assert (Path(d['train'][0]).parents[2] / 'JPEGImages' / f'{held[0]}.jpg').is_file()
