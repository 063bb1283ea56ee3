"""detect.py with the official YOLOv5n checkpoint finds what the official code finds (../shared README)."""
from collections import Counter
from pathlib import Path

import pytest

import detect

SHARED = Path(__file__).resolve().parents[2] / 'shared'
WEIGHTS = SHARED / 'weights' / 'yolov5n.pt'
pytestmark = pytest.mark.slow  # the official yolov5n at 640 px


@pytest.mark.skipif(not WEIGHTS.is_file(), reason='needs ../shared/weights/yolov5n.pt (official YOLOv5n)')
def test_official_yolov5n_on_bus_and_zidane(tmp_path, capsys):
    results = detect.run(weights=str(WEIGHTS), source=str(SHARED / 'images'), project=str(tmp_path), device='cpu',
                         save_txt=True)
    found = {Path(r['path']).name: Counter(r['names'][int(c)] for c in r['det'][:, 5]) for r in results}
    assert found['bus.jpg'] == {'person': 4, 'bus': 1}
    assert found['zidane.jpg'] == {'person': 2, 'tie': 1}
    out = capsys.readouterr().out
    assert 'bus.jpg: 640x480 4 persons, 1 bus' in out and 'zidane.jpg: 384x640 2 persons, 1 tie' in out
    assert (tmp_path / 'exp' / 'bus.jpg').is_file()
    assert len((tmp_path / 'exp' / 'labels' / 'bus.txt').read_text().splitlines()) == 5
