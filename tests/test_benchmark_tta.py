"""benchmarks/tta.py: AP with and without test-time augmentation, and its time cost, as a table and JSON."""
import json
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import tta  # noqa: E402



def test_table_and_json_agree_with_val(tmp_path, tiny_data, make_tiny_checkpoint, single_thread):
    """On a tiny model and data: the benchmark's AP columns are val.run's, with and without augment."""
    import val
    weights = make_tiny_checkpoint(tmp_path / 'tiny.pt')
    rows = tta.main(['--weights', str(weights), '--data', str(tiny_data), '--imgsz', '64', '--batch-size', '4',
                     '--workers', '0', '--timing-batches', '1', '--out', str(tmp_path / 'tta')])
    common = dict(data=str(tiny_data), weights=str(weights), imgsz=64, batch_size=4, workers=0, device='cpu',
                  plots=False, save_dir=tmp_path / 'val')
    plain, augmented = val.run(**common), val.run(augment=True, **common)
    row, = rows
    assert (row['plain_map50'], row['tta_map50']) == (plain.map50, augmented.map50)
    assert row['gain_map50'] == augmented.map50 - plain.map50 and row['images'] == 8
    assert row['interleaved_images'] == 4 and row['interleaved_ratio'] > 1  # three views cost more than one
    saved = json.loads((tmp_path / 'tta.json').read_text())
    assert saved['results'] == rows and saved['command'].startswith('python benchmarks/tta.py --weights')
    md = (tmp_path / 'tta.md').read_text()
    assert f"| tiny | {plain.map50:.4f} | {augmented.map50:.4f} | {row['gain_map50']:+.4f} |" in md
