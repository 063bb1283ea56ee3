"""benchmarks/allocator.py: fresh processes in turn, the table and JSON (a tiny model, a few forwards)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('allocator_benchmark', ROOT / 'benchmarks' / 'allocator.py')
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
pytestmark = pytest.mark.slow


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt')
def test_rounds_table_and_json(tmp_path, make_tiny_checkpoint):
    weights = make_tiny_checkpoint(tmp_path / 'tiny.pt')
    out = tmp_path / 'alloc'
    res = allocator.main(['--weights', str(weights), '--imgsz', '64', '--rounds', '1', '--warmup', '1',
                          '--reps', '3', '--out', str(out)])
    one, = res['rounds']
    assert [one[m]['mode'] for m in allocator.MODES] == list(allocator.MODES)
    assert one['keep_freed_memory']['set'] and not one['default']['set'] and res['set']
    assert res['speedup'] == one['default']['ms'] / one['keep_freed_memory']['ms'] > 0
    saved = json.loads(out.with_suffix('.json').read_text())
    assert saved['speedup'] == res['speedup'] and saved['command'].startswith('python benchmarks/allocator.py')
    md = out.with_suffix('.md').read_text()
    assert f"| keep_freed_memory | {res['summary']['keep_freed_memory']['ms']:.1f} |" in md
    assert f"**{res['speedup']:.2f}x**" in md


def test_weights_that_do_not_load_are_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        allocator.main(['--weights', str(tmp_path / 'missing.pt'), '--rounds', '1', '--out', str(tmp_path / 'a')])
    msg = str(e.value)
    assert msg.startswith('benchmarks/allocator.py: the default measurement failed: ') and '\n' not in msg
    assert 'missing.pt' in msg
