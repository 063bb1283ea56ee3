"""results.csv: one fixed header, cells by column name, read back by name (utils/eval/report.py, plot_results)."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from utils.eval.plots import plot_results, results_figure
from utils.eval.report import COLUMNS, append_row, epoch_row, read_rows


def groups(*names):
    return [{'name': n, 'lr': 0.01 * (i + 1)} for i, n in enumerate(names)]


def test_rows_have_the_same_columns_whatever_the_optimizer_groups(tmp_path):
    result = SimpleNamespace(p=0.5, r=0.25, map50=0.4, map=0.2, losses=(0.1, 0.2, 0.3))
    path = tmp_path / 'results.csv'
    append_row(path, epoch_row(0, [1.0, 2.0, 3.0], result, groups('decay', 'bias')))  # --freeze all: no BN
    append_row(path, epoch_row(1, [1.0, 2.0, 3.0], result, groups('decay', 'decay', 'bn', 'bias', 'bias')))
    append_row(path, epoch_row(2, [1.0, 2.0, 3.0], None, groups('decay', 'bn', 'bias')))  # --noval epoch
    lines = path.read_text().splitlines()
    assert lines[0] == ','.join(COLUMNS) and all(len(line.split(',')) == len(COLUMNS) for line in lines)
    rows = read_rows(path)
    assert [r['epoch'] for r in rows] == [0, 1, 2]
    assert rows[0]['x/lr0'] == 0.01 and math.isnan(rows[0]['x/lr1']) and rows[0]['x/lr2'] == 0.02
    assert (rows[1]['x/lr0'], rows[1]['x/lr1'], rows[1]['x/lr2']) == (0.01, 0.03, 0.04)  # first group of a kind
    assert rows[0]['metrics/mAP_0.5:0.95'] == 0.2 and rows[0]['val/cls_loss'] == 0.3
    assert rows[2]['metrics/precision'] == 0.0  # not validated: zeros, as before
    with pytest.raises(ValueError, match='unknown results.csv column'):
        append_row(path, {'epoch': 3, 'x/lr3': 0.1})


def test_plot_results_reads_columns_by_name(tmp_path):
    path = tmp_path / 'results.csv'
    shuffled = list(reversed(COLUMNS)) + ['extra']  # another column order, one unknown column
    path.write_text(','.join(shuffled) + '\n' + '\n'.join(
        ','.join(str(e if c == 'epoch' else np.float64(e + 1) / 10) for c in shuffled) for e in range(3)) + '\n')
    out = plot_results(path)
    assert out is not None and out.is_file()
    assert [r['epoch'] for r in read_rows(path)] == [0, 1, 2] and read_rows(path)[2]['extra'] == pytest.approx(0.3)


def test_voc_data_rows_carry_the_devkit_ap50_and_other_data_leave_it_empty(tmp_path):
    path = tmp_path / 'results.csv'
    voc = SimpleNamespace(p=0.5, r=0.25, map50=0.4, map=0.2, losses=(0.1, 0.2, 0.3), voc_map=0.375)
    coco = SimpleNamespace(p=0.5, r=0.25, map50=0.4, map=0.2, losses=(0.1, 0.2, 0.3), voc_map=None)
    append_row(path, epoch_row(-1, [0.0, 0.0, 0.0], voc, groups('decay')))
    append_row(path, epoch_row(0, [1.0, 2.0, 3.0], coco, groups('decay')))
    rows = read_rows(path)
    assert rows[0]['metrics/voc_mAP_0.5'] == 0.375 and math.isnan(rows[1]['metrics/voc_mAP_0.5'])


def test_an_epoch_val_every_skipped_keeps_train_cells_and_leaves_metrics_empty(tmp_path):
    path = tmp_path / 'results.csv'
    voc = SimpleNamespace(p=0.5, r=0.25, map50=0.4, map=0.2, losses=(0.1, 0.2, 0.3), voc_map=0.375)
    append_row(path, epoch_row(0, [1.0, 2.0, 3.0], voc, groups('decay', 'bn', 'bias'), validated=False))
    append_row(path, epoch_row(1, [1.5, 2.5, 3.5], voc, groups('decay', 'bn', 'bias')))
    cells = path.read_text().splitlines()[1].split(',')
    assert cells[:4] == ['0', '1', '2', '3'] and cells[4:11] == [''] * 7 and cells[14] == ''
    assert cells[11:14] == ['0.01', '0.02', '0.03']  # LRs stay
    rows = read_rows(path)
    assert math.isnan(rows[0]['metrics/mAP_0.5']) and math.isnan(rows[0]['val/box_loss'])
    assert rows[1]['metrics/mAP_0.5'] == 0.4 and rows[1]['metrics/voc_mAP_0.5'] == 0.375


def test_results_png_draws_the_validated_points_only(tmp_path):
    """Epochs --val-every skipped have NaN metrics: each panel draws the filled epochs, joined by one line."""
    rows = [{'epoch': e, 'train/box_loss': 1.0 - e / 10, **({'metrics/mAP_0.5': e / 10} if e % 2 else {})}
            for e in range(5)]
    rows = [{**r, 'metrics/recall': r.get('metrics/mAP_0.5', math.nan)} for r in rows]  # NaN cells, as read back
    axes = {ax.get_title(): ax for ax in results_figure(rows).axes}
    for key in ('metrics/mAP_0.5', 'metrics/recall'):
        line = axes[key].lines[0]
        assert list(line.get_xdata()) == [2, 4] and list(line.get_ydata()) == [0.1, 0.3]
    assert list(axes['train/box_loss'].lines[0].get_xdata()) == [1, 2, 3, 4, 5]
    path = tmp_path / 'results.csv'
    for r in rows:
        append_row(path, {k: v for k, v in r.items() if not math.isnan(v)})
    assert plot_results(path).is_file()
