"""benchmarks/keep_classes.py: the relabelled 'names+new' data and the table's verdicts (no training here)."""
import importlib.util
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('keep_classes_benchmark', ROOT / 'benchmarks' / 'keep_classes.py')
keep_classes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(keep_classes)


def test_names_plus_new_data_moves_labels_past_the_checkpoints_classes(tmp_path):
    src = tmp_path / 'src'
    (src / 'images').mkdir(parents=True)
    (src / 'labels').mkdir()
    for i, label in enumerate(['0 0.5 0.5 0.1 0.1\n1 0.2 0.2 0.1 0.1\n', '']):
        (src / 'images' / f'{i}.jpg').write_bytes(b'jpg')
        (src / 'labels' / f'{i}.txt').write_text(label)
    for split in ('train', 'val', 'test'):
        (src / f'{split}.txt').write_text('./images/0.jpg\n./images/1.jpg\n')
    (src / 'd.yaml').write_text('path: .\ntrain: train.txt\nval: val.txt\ntest: test.txt\nnc: 2\n'
                                'names: [helmet, head]\n')
    out = keep_classes.names_plus_new_data(src / 'd.yaml', ['person', 'car', 'dog'], tmp_path / 'out')
    d = yaml.safe_load(out.read_text())
    assert d['names'] == ['person', 'car', 'dog', 'helmet', 'head'] and d['nc'] == 5
    assert (tmp_path / 'out' / 'labels' / '0.txt').read_text() == '3 0.5 0.5 0.1 0.1\n4 0.2 0.2 0.1 0.1\n'
    assert (tmp_path / 'out' / 'labels' / '1.txt').read_text() == ''
    assert (tmp_path / 'out' / 'images' / '0.jpg').resolve() == (src / 'images' / '0.jpg').resolve()


def result(keep_voc, keep_helmet, keep_ms):
    row = {'checkpoint_ap': None, 'train_s_per_epoch': 10.0, 'file_mb': 4.0}
    return {'options': {'weights': 'yolov5n.pt', 'data': 'hardhat.yaml', 'freeze': '10', 'epochs': 10, 'imgsz': 416,
                        'batch_size': 16, 'seed': 0, 'time_imgsz': 640},
            'zero_shot': {'voc_ap50': 0.5, 'person_ap50': 0.6}, 'checkpoint_file_mb': 3.9,
            'rows': {'keep': {**row, 'new_ap50': {'helmet': keep_helmet, 'head': 0.5},
                              'checkpoint_ap': {'voc_ap50': keep_voc, 'person_ap50': 0.6}},
                     'plain': {**row, 'new_ap50': {'helmet': 0.8, 'head': 0.5}},
                     'names+new': {**row, 'new_ap50': {'helmet': 0.8, 'head': 0.5},
                                   'checkpoint_ap': {'voc_ap50': 0.2, 'person_ap50': 0.1}}},
            'same_predictions': {'images': 2, 'detections': 9, 'equal': True, 'max_abs_diff': 0.0},
            'inference_ms': {'checkpoint': 100.0, 'keep (freeze 10)': keep_ms, 'keep (all but Detect frozen)': 105.0}}


def test_table_and_verdicts():
    text = keep_classes.table(result(0.5015, 0.79, 139.0))
    assert '| names+new | 0.800 | 0.500 | 0.200 | 0.100 | 10.0 | 4.0 |' in text
    assert '| plain | 0.800 | 0.500 | 0.000 | 0.000 |' in text  # plain names no VOC class: 0
    assert 'NOT met' not in text and 'Checkpoint-class detections on 2 images (9 boxes): equal' in text
    bad = keep_classes.verdicts(result(0.497, 0.77, 141.0))
    assert [v.endswith('NOT met') for v in bad] == [True, True, False, True, False]
    json.dumps(result(0.5, 0.8, 100.0))  # what main writes is plain JSON


def test_verdicts_use_the_paired_ratio_not_the_ratio_of_medians():
    res = result(0.5, 0.8, 0.0)
    res['inference_ms'] = {'checkpoint': {'ms': 100.0},
                           'keep (freeze 10)': {'ms': 150.0, 'ratio': 1.38, 'ratio_q1': 1.3, 'ratio_q3': 1.45},
                           'keep (all but Detect frozen)': {'ms': 100.0, 'ratio': 1.12, 'ratio_q1': 1.0,
                                                            'ratio_q3': 1.2}}
    assert [v.endswith('NOT met') for v in keep_classes.verdicts(res)][-2:] == [False, True]
    assert '| keep (freeze 10) | 150.0 | 1.38x | 1.30-1.45 |' in keep_classes.table(res)


def test_retime_measures_inference_again_and_keeps_the_rest(tiny_data, tmp_path, monkeypatch):
    """--retime: the saved result with new inference times of the three models, nothing trained."""
    import torch

    from models.yolo import Model
    from utils.freeze.keep import keep_classes_model
    from utils.weights.checkpoint import FORMAT, read_weights, save_checkpoint
    torch.manual_seed(0)
    src = Model('v6/yolov5n.yaml', nc=3)
    save_checkpoint({'format': FORMAT, 'yaml': src.yaml, 'names': ['person', 'car', 'dog'], 'nc': 3, 'model': None,
                     'ema': src.state_dict()}, tmp_path / 'src.pt')
    kept = keep_classes_model(read_weights(tmp_path / 'src.pt'), ['helmet', 'head'], None, '10')[0]
    best = tmp_path / 'project' / 'keep' / 'weights' / 'best.pt'
    best.parent.mkdir(parents=True)
    save_checkpoint({'format': FORMAT, 'yaml': kept.yaml, 'names': kept.names, 'nc': kept.yaml['nc'], 'model': None,
                     'ema': kept.state_dict()}, best)
    saved = result(0.5, 0.8, 1e6)
    saved['options'].update(weights=str(tmp_path / 'src.pt'), data=str(tiny_data))
    saved['command'] = 'python benchmarks/keep_classes.py --epochs 10'
    out = tmp_path / 'kc'
    out.with_suffix('.json').write_text(json.dumps(saved))
    import utils.runs
    monkeypatch.setattr(utils.runs, 'keep_freed_memory', lambda: True)  # the real one tunes this process's malloc
    keep_classes.main(['--retime', '--project', str(tmp_path / 'project'), '--out', str(out),
                       '--time-imgsz', '64', '--time-reps', '2'])
    res = json.loads(out.with_suffix('.json').read_text())
    ms = res['inference_ms']
    assert list(ms) == ['checkpoint', 'keep (freeze 10)', 'keep (all but Detect frozen)']
    assert all(0 < v['ms'] < 1e5 for v in ms.values())  # measured now, not the saved 1e6
    assert all(0 < v['ratio_q1'] <= v['ratio'] <= v['ratio_q3'] for v in list(ms.values())[1:])
    assert res['inference_allocator'] == 'steady' and list(res['inference_ms_default_allocator']) == list(ms)
    assert res['rows'] == saved['rows'] and res['options']['time_imgsz'] == 64
    md = out.with_suffix('.md').read_text()
    assert md.startswith('# --keep-classes benchmark\n\n`python benchmarks/keep_classes.py --epochs 10`')
    assert 'Inference measured again, nothing else, by `python benchmarks/keep_classes.py --retime' in md
    assert 'default allocator: ms | vs checkpoint | quartiles |' in md and md.count('| keep (') == 2, md


def test_retime_without_a_saved_result_is_one_line(tmp_path):
    import pytest
    with pytest.raises(SystemExit) as e:
        keep_classes.main(['--retime', '--project', str(tmp_path), '--out', str(tmp_path / 'kc')])
    assert str(e.value) == f"--retime: {tmp_path / 'kc.json'} not found (run the benchmark once without --retime first)"
