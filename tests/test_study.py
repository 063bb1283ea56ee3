"""val.py --task study (utils/eval/study.py): mAP and speed over image sizes, as a table, CSV and PNG."""
import csv

import pytest

import val
from utils.errors import InputError
from utils.eval.study import DEFAULT_SIZES, parse_sizes


def test_parse_sizes_ranges_lists_and_errors():
    assert parse_sizes(DEFAULT_SIZES) == list(range(256, 1537, 128)) and len(parse_sizes([DEFAULT_SIZES])) == 11
    assert parse_sizes(['640', '320:448:64', '640']) == [640, 320, 384, 448]
    for bad in ('abc', '320:640', '0', '320:640:-64'):
        with pytest.raises(InputError, match=f'^--study-sizes {bad}: expected a size such as 640 or a range'):
            parse_sizes([bad])
    with pytest.raises(InputError, match='^--study-sizes 640:320:64: no sizes in that range$'):
        parse_sizes(['640:320:64'])


def test_study_cli_two_sizes_writes_table_csv_and_plot(tmp_path, tiny_data, capsys, make_tiny_checkpoint,
                                                       single_thread):
    weights = make_tiny_checkpoint(tmp_path / 'tiny.pt')
    val.main(['--weights', str(weights), '--data', str(tiny_data), '--task', 'study', '--study-sizes', '64', '96',
              '--workers', '0', '--device', 'cpu', '--project', str(tmp_path / 'runs'), '--name', 'study'])
    out = capsys.readouterr().out
    folder = tmp_path / 'runs' / 'study'
    table = (folder / 'study.md').read_text()
    assert table.strip() in out and table.startswith('| model | imgsz | mAP50 | mAP50-95 |')
    with open(folder / 'study.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['model'], r['imgsz']) for r in rows] == [('tiny', '64'), ('tiny', '96')]
    assert all(0 <= float(r['map']) <= float(r['map50']) <= 1 and float(r['ms_inference']) > 0 for r in rows)
    for r in rows:  # the table shows the CSV's numbers
        assert f"| tiny | {r['imgsz']} | {float(r['map50']):.4f} | {float(r['map']):.4f} |" in table
    assert (folder / 'study.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
