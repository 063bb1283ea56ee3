"""benchmarks/ap_gain.py: a model's devkit AP50 change against a base, with a paired bootstrap interval."""
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import ap_gain  # noqa: E402

VOC07 = ROOT.parent / 'shared' / 'data' / 'voc07mini' / 'VOCdevkit' / 'VOC2007'
YOLOV5N = ROOT.parent / 'shared' / 'weights' / 'yolov5n.pt'
NAMES = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable', 'dog',
         'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor']
needs_shared = pytest.mark.skipif(not (VOC07.is_dir() and YOLOV5N.is_file()),
                                  reason='../shared/data/voc07mini or ../shared/weights/yolov5n.pt not present')


def small_voc(root, n=6, rule='voc07'):
    """A VOC data YAML over the first ``n`` ids of voc07mini's test list (linked, not copied)."""
    year = root / 'VOCdevkit' / 'VOC2007'
    (year / 'ImageSets' / 'Main').mkdir(parents=True)
    for sub in ('JPEGImages', 'Annotations'):
        (year / sub).symlink_to(VOC07 / sub, target_is_directory=True)
    ids = (VOC07 / 'ImageSets' / 'Main' / 'test.txt').read_text().split()[:n]
    (year / 'ImageSets' / 'Main' / 'few.txt').write_text(''.join(f'{i}\n' for i in ids))
    cfg = {'path': str(root), 'format': 'voc', 'eval': rule, 'train': 'VOCdevkit/VOC2007/ImageSets/Main/few.txt',
           'val': 'VOCdevkit/VOC2007/ImageSets/Main/few.txt', 'names': NAMES}
    path = root / f'few_{rule}.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@needs_shared
def test_the_same_weights_gain_nothing_and_the_table_and_json_say_so(tmp_path, capsys):
    data = small_voc(tmp_path / 'voc')
    out = tmp_path / 'gain'
    ap_gain.main(['--data', str(data), '--base', str(YOLOV5N), '--new', str(YOLOV5N), '--imgsz', '160',
                  '--device', 'cpu', '--workers', '0', '--resamples', '50', '--project', str(tmp_path / 'runs'),
                  '--out', str(out)])
    row = json.loads(Path(f'{out}.json').read_text())['rows'][0]
    assert row['images'] == 6 and row['resamples'] == 50
    assert row['diff'] == row['diff_low'] == row['diff_high'] == 0.0 and row['a'] == row['b'] > 0
    assert '+0.000 (+0.000 to +0.000) | 1.000 |' in Path(f'{out}.md').read_text()
    assert '(base)' in capsys.readouterr().out


@needs_shared
def test_data_without_a_voc_rule_is_a_one_line_error(tmp_path, capsys):
    data = small_voc(tmp_path / 'voc', rule='coco')
    with pytest.raises(SystemExit) as e:
        ap_gain.main(['--data', str(data), '--base', str(YOLOV5N), '--new', str(YOLOV5N), '--device', 'cpu'])
    assert str(e.value) == f'error: {data}: the AP gain needs a VOC devkit rule (eval: voc07 or voc12), got coco'
