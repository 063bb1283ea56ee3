"""benchmarks/feature_cache.py: its settings, its table, and a tiny study end to end on a hold-out split."""
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))  # the study imports its sibling benchmarks (transfer, holdout)
spec = importlib.util.spec_from_file_location('feature_cache_study', ROOT / 'benchmarks' / 'feature_cache.py')
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)
SHARED = ROOT.parent / 'shared'
VOC07 = SHARED / 'data' / 'voc07mini' / 'VOCdevkit' / 'VOC2007'


def test_settings_and_their_flags(tmp_path):
    opt = study.parse_opt(['--project', str(tmp_path), '--settings', 'freeze10', 'cache2', 'cache4-flipshift'])
    got = study.parse_settings(opt)
    hyp = tmp_path / 'hyp.feature-flipshift.yaml'
    assert got == [('freeze10', ['--freeze', '10']),
                   ('cache2', ['--freeze', '10', '--cache', 'features', '--cache-views', '2']),
                   ('cache4-flipshift', ['--freeze', '10', '--cache', 'features', '--cache-views', '4',
                                         '--hyp', str(hyp)])]
    written = yaml.safe_load(hyp.read_text())
    assert written['feature_fliplr'] == 0.5 and written['feature_shift'] == 0.1 and written['mosaic'] == 1.0
    assert study.default_settings([2, 4, 8]) == ['freeze10', 'cache2', 'cache4', 'cache8', 'cache4-flip',
                                                 'cache4-shift']
    crop = study.parse_settings(study.parse_opt(['--project', str(tmp_path), '--settings', 'cache4-crop']))
    assert crop[0][1][-2:] == ['--hyp', str(tmp_path / 'hyp.feature-crop.yaml')]
    assert yaml.safe_load((tmp_path / 'hyp.feature-crop.yaml').read_text())['feature_crop'] == 0.8
    study.parse_settings(study.parse_opt(['--project', str(tmp_path), '--settings', 'cache4-whole']))
    assert yaml.safe_load((tmp_path / 'hyp.feature-whole.yaml').read_text())['feature_crop'] == 1.0
    with pytest.raises(ValueError, match='--settings cachex: expected'):
        study.parse_settings(SimpleNamespace(settings=['cachex'], project=str(tmp_path), hyp=None))


def test_table():
    rows = [{'setting': 'freeze10', 'ap50': 0.8123, 'map': 0.5, 'ap50_is_voc': True, 'wall_s': 320.0,
             's_per_epoch': 15.0},
            {'setting': 'cache4', 'ap50': 0.805, 'map': 0.49, 'ap50_is_voc': True, 'wall_s': 160.0,
             's_per_epoch': 5.0, 'cache_build_s': 60.0, 'cache_mb': 2048.0}]
    opt = SimpleNamespace(weights='w/yolov5n.pt', data='d/voc.yaml', epochs=20, imgsz=640, batch_size=16, seed=0,
                          hyp=None, device='cpu')
    table = study.markdown_table(rows, opt)
    assert '| setting | AP50 (VOC devkit) | mAP50-95 | wall s | cache build s | cache MB |' in table
    assert '| freeze10 | 0.812 | 0.500 | 320 | - | - | 15.0 | 1.00x |' in table
    assert '| cache4 | 0.805 | 0.490 | 160 | 60.0 | 2,048 | 5.0 | 2.00x |' in table


@pytest.mark.slow
@pytest.mark.skipif(not (VOC07.is_dir() and (SHARED / 'weights' / 'yolov5n.pt').is_file()),
                    reason='needs ../shared/data/voc07mini and ../shared/weights/yolov5n.pt')
def test_tiny_study_on_a_holdout_split(tmp_path, monkeypatch):
    """freeze10 and cache2-flip, one epoch at 64 px on 8 VOC2007 trainval images split 6 / 2: both rows reach the
    table and the JSON, the cached one with its build time and size; the test list is never used."""
    year = tmp_path / 'voc' / 'VOCdevkit' / 'VOC2007'
    (year / 'ImageSets' / 'Main').mkdir(parents=True)
    for d in ('JPEGImages', 'Annotations'):
        os.symlink(VOC07 / d, year / d)
    ids = (VOC07 / 'ImageSets' / 'Main' / 'trainval.txt').read_text().split()
    for split, some in (('trainval', ids[:8]), ('test', ids[8:10])):
        (year / 'ImageSets' / 'Main' / f'{split}.txt').write_text(''.join(f'{i}\n' for i in some))
    names = (SHARED / 'data' / 'voc07mini' / 'voc07mini.yaml').read_text().split('names:')[1].strip()
    data = tmp_path / 'voc' / 'tiny_voc.yaml'
    data.write_text('path: .\nformat: voc\neval: voc07\ntrain: VOCdevkit/VOC2007/ImageSets/Main/trainval.txt\n'
                    f'val: VOCdevkit/VOC2007/ImageSets/Main/test.txt\nnc: 20\nnames: {names}\n')
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    out = tmp_path / 'out' / 'fc'
    study.main(['--data', str(data), '--weights', str(SHARED / 'weights' / 'yolov5n.pt'), '--epochs', '1',
                '--imgsz', '64', '--batch-size', '4', '--workers', '0', '--device', 'cpu', '--holdout',
                '--holdout-every', '4', '--settings', 'freeze10', 'cache2-flip', '--project', str(tmp_path / 'runs'),
                '--out', str(out)])
    saved = json.loads(out.with_suffix('.json').read_text())
    assert saved['config']['data'].endswith('holdout.yaml')
    base, cached = saved['results']
    assert base['setting'] == 'freeze10' and 'cache_mb' not in base and base['ap50_is_voc']
    assert cached['cache_where'] == 'RAM' and cached['cache_mb'] > 0 and cached['cache_build_s'] > 0
    assert 0 <= cached['ap50'] <= 1 and '--cache-views 2' in cached['flags']
    assert '| cache2-flip | ' in out.with_suffix('.md').read_text()
