"""benchmarks/transfer.py (the freeze study): settings, curves read by column name, the Markdown table."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from utils.eval.report import append_row

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


def test_every_setting_validates_each_epoch_unless_told():
    """The lowest-AP50 column needs every epoch: the study passes --val-every 1 (train.py's auto would skip)
    unless --val-every says otherwise."""
    import train
    for argv, expected in (([], 1), (['--val-every', '3'], 3)):
        opt = study.parse_opt(['--epochs', '20', *argv])
        parsed = train.parse_opt(study.train_args(opt, 'freeze10', ['--freeze', '10']))
        assert parsed.val_every == expected and parsed.epochs == 20 and parsed.freeze == ['10']


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


def test_curves_leave_out_the_epochs_val_every_skipped(tmp_path):
    """A --val-every 2 run: epoch 0 has train losses but empty metric cells; it is in neither curve."""
    csv = tmp_path / 'results.csv'
    append_row(csv, {'epoch': -1, 'metrics/mAP_0.5': 0.5, 'metrics/mAP_0.5:0.95': 0.3, 'metrics/voc_mAP_0.5': 0.45})
    append_row(csv, {'epoch': 0, 'train/box_loss': 0.1, 'x/lr0': 0.01})
    append_row(csv, {'epoch': 1, 'train/box_loss': 0.09, 'metrics/mAP_0.5': 0.6, 'metrics/mAP_0.5:0.95': 0.4,
                     'metrics/voc_mAP_0.5': 0.55})
    assert study.read_curve(csv) == [(-1, 0.5, 0.3), (1, 0.6, 0.4)]
    assert study.read_voc_curve(csv) == [(-1, 0.45), (1, 0.55)]
    s = study.summarise(study.read_curve(csv), study.read_voc_curve(csv))
    assert (s['final_map50'], s['best_epoch'], s['final_voc']) == (0.6, 1, 0.55)


def voc_csv(path, rows):
    for epoch, m50, m, voc in rows:
        append_row(path, {'epoch': epoch, 'metrics/mAP_0.5': m50, 'metrics/mAP_0.5:0.95': m,
                          'metrics/voc_mAP_0.5': voc})
    return path


def test_voc_curve_summary_table_and_plot(tmp_path):
    """With the devkit AP50 column filled, the study reports it (zero-shot, final, best, lowest, change) next to
    mAP50-95, and plots it; without it (the CSV of test_curve_and_table) nothing changes."""
    csv = voc_csv(tmp_path / 'results.csv', ((-1, 0.74, 0.48, 0.72), (0, 0.70, 0.45, 0.69), (1, 0.75, 0.50, 0.76),
                                            (2, 0.76, 0.49, 0.74)))
    voc_curve = study.read_voc_curve(csv)
    assert voc_curve == [(-1, 0.72), (0, 0.69), (1, 0.76), (2, 0.74)]
    s = study.summarise(study.read_curve(csv), voc_curve)
    assert (s['zero_shot_voc'], s['final_voc'], s['best_voc'], s['best_voc_epoch'], s['lowest_voc']) == \
        (0.72, 0.74, 0.76, 1, 0.69)  # the zero-shot row is never the best or the lowest
    assert s['voc_change'] == pytest.approx(0.02) and (s['best_map_value'], s['best_map_epoch']) == (0.50, 1)
    assert (s['best_map50'], s['best_epoch'], s['final_map']) == (0.76, 2, 0.49)  # mAP50's own figures stay
    row = {'setting': 'freeze10', 'wall_s': 100.0, 's_per_epoch': 5.0, 'peak_rss_mb': 1500.0, 'peak_cuda_mb': 800.0,
           **s}
    opt = SimpleNamespace(weights='w/yolov5s.pt', data='data/voc.yaml', epochs=3, imgsz=640, batch_size=16, seed=0,
                          hyp=None, device='0', jobs=1)
    table = study.markdown_table([{**row, 's_per_epoch': 10.0, 'setting': 'freeze0'}, row], opt)
    assert '| setting | zero-shot AP50 | zero-shot mAP50-95 | final AP50 | final mAP50-95 | best AP50 (epoch) | ' \
           'best mAP50-95 (epoch) | lowest AP50 | final - zero-shot AP50 | wall s | s/epoch | speedup | ' \
           'peak RSS MB | peak CUDA MB |' in table and 'VOC devkit AP50' in table
    assert '| freeze10 | 0.720 | 0.480 | 0.740 | 0.490 | 0.760 (2) | 0.500 (2) | 0.690 | +0.020 | 100 | 5.0 | ' \
           '2.00x | 1,500 | 800 |' in table
    assert study.plot_curves([row], tmp_path / 'voc.png').is_file()
    plain = voc_csv(tmp_path / 'plain.csv', ((-1, 0.5, 0.3, ''), (0, 0.5, 0.3, '')))
    assert study.read_voc_curve(plain) is None and 'voc_curve' not in study.summarise(study.read_curve(plain))


SHARED = ROOT.parent / 'shared'
VOC07 = SHARED / 'data' / 'voc07mini' / 'VOCdevkit' / 'VOC2007'


@pytest.mark.slow
@pytest.mark.skipif(not (VOC07.is_dir() and (SHARED / 'weights' / 'yolov5n.pt').is_file()),
                    reason='needs ../shared/data/voc07mini and ../shared/weights/yolov5n.pt')
def test_tiny_voc_study_end_to_end(tmp_path, monkeypatch):
    """One setting, one epoch at 96 px on 8 + 4 VOC2007 images: the worker's results.csv reaches the VOC table,
    the JSON and the PNG."""
    import json
    import os
    year = tmp_path / 'voc' / 'VOCdevkit' / 'VOC2007'
    (year / 'ImageSets' / 'Main').mkdir(parents=True)
    for d in ('JPEGImages', 'Annotations'):
        os.symlink(VOC07 / d, year / d)
    for split, n in (('trainval', 8), ('test', 4)):
        ids = (VOC07 / 'ImageSets' / 'Main' / f'{split}.txt').read_text().split()[:n]
        (year / 'ImageSets' / 'Main' / f'{split}.txt').write_text(''.join(f'{i}\n' for i in ids))
    names = (SHARED / 'data' / 'voc07mini' / 'voc07mini.yaml').read_text().split('names:')[1].strip()
    data = tmp_path / 'voc' / 'tiny_voc.yaml'
    data.write_text('path: .\nformat: voc\neval: voc07\ntrain: VOCdevkit/VOC2007/ImageSets/Main/trainval.txt\n'
                    f'val: VOCdevkit/VOC2007/ImageSets/Main/test.txt\nnc: 20\nnames: {names}\n')
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # the worker process: no spin-waiting threads on a busy machine
    out = tmp_path / 'out' / 'transfer'
    written, write = [], study.write_outputs  # the files after each setting: a stopped study keeps its rows
    monkeypatch.setattr(study, 'write_outputs', lambda rows, opt, quiet=False: (
        written.append((len(rows), quiet, json.loads(out.with_suffix('.json').read_text())['results']
                        if out.with_suffix('.json').exists() else None)), write(rows, opt, quiet)))
    study.main(['--data', str(data), '--weights', str(SHARED / 'weights' / 'yolov5n.pt'), '--epochs', '1',
                '--imgsz', '96', '--batch-size', '4', '--workers', '0', '--device', 'cpu', '--settings', 'freeze10',
                'all-but-detect', '--project', str(tmp_path / 'runs'), '--out', str(out)])
    assert [(n, quiet) for n, quiet, _ in written] == [(1, True), (2, False)] and written[0][2] is None
    assert len(written[1][2]) == 1  # what the first write left on disk: freeze10's row
    table = out.with_suffix('.md').read_text()
    assert 'zero-shot AP50' in table and '| freeze10 | ' in table and '| all-but-detect | ' in table
    assert '1.00x' in table
    row = json.loads(out.with_suffix('.json').read_text())['results'][0]
    assert [e for e, _ in row['voc_curve']] == [-1, 0] and 0 <= row['zero_shot_voc'] <= 1
    assert row['best_voc_epoch'] == 0 and row['voc_change'] == pytest.approx(row['final_voc'] - row['zero_shot_voc'])
    assert out.with_suffix('.png').is_file()


def test_resume_runs_only_the_settings_not_yet_measured(tmp_path, monkeypatch):
    """--resume keeps OUT.json's rows of the asked settings with unchanged flags, runs the others, and refuses,
    in one line naming the file, the JSON of another study or a file that is no study JSON."""
    import json
    calls = []

    def fake_run(opt, name, flags):
        calls.append(name)
        return {'setting': name, 'flags': ' '.join(flags), 'wall_s': 10.0, 's_per_epoch': 1.0 + len(calls),
                'peak_rss_mb': 100.0, 'peak_cuda_mb': None, **study.summarise([(-1, 0.5, 0.3), (0, 0.6, 0.4)])}

    monkeypatch.setattr(study, 'run_setting', fake_run)
    monkeypatch.setattr(study, 'mapping_off_data', lambda data, out: Path(out) / 'mapping_off.yaml')
    out = tmp_path / 'study'
    base = ['--data', 'd.yaml', '--weights', 'w.pt', '--epochs', '4', '--project', str(tmp_path / 'runs'),
            '--out', str(out)]
    study.main([*base, '--settings', 'freeze0', 'freeze10'])
    assert calls == ['freeze0', 'freeze10']
    study.main([*base, '--resume', '--settings', 'freeze0', 'freeze10:--freeze 10 --cos-lr', 'all-but-detect'])
    assert calls[2:] == ['freeze10', 'all-but-detect']  # freeze10's flags changed: measured again
    rows = json.loads(out.with_suffix('.json').read_text())['results']
    assert [(r['setting'], r.get('reused', False)) for r in rows] == \
        [('freeze0', True), ('freeze10', False), ('all-but-detect', False)]
    assert rows[0]['s_per_epoch'] == 2.0  # the row measured by the first run, kept as it was
    table = out.with_suffix('.md').read_text()
    assert 'reused by --resume from an earlier run, times measured then: freeze0\n' in table
    with pytest.raises(SystemExit, match=r"study\.json: another study's options \(epochs 4 there, 6 now\)"):
        study.main([*base[:5], '6', *base[6:], '--resume', '--settings', 'freeze0'])
    out.with_suffix('.json').write_text('{"config": {}')
    with pytest.raises(SystemExit, match=r'study\.json: not a study JSON \(JSONDecodeError'):
        study.main([*base, '--resume'])
    assert len(calls) == 4
