"""Label caches that are truncated, garbage, of another version or stale are rebuilt with one line saying why;
a read-only data set still trains, its caches kept elsewhere."""
import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data.datasets import load_records
from utils.data.label_scan import CACHE_VERSION

DATA = {'nc': 3, 'names': ['a', 'b', 'c'], 'format': 'yolo'}


def make_source(root, n=3):
    """``root/images/train`` with n PNGs and their labels (one box of class k % 3 each)."""
    for k in range(n):
        add_image(root, f'i{k}', f'{k % 3} 0.5 0.5 0.2 0.2\n')
    return root / 'images' / 'train'


def add_image(root, stem, label):
    (root / 'images' / 'train').mkdir(parents=True, exist_ok=True)
    (root / 'labels' / 'train').mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / 'images' / 'train' / f'{stem}.png'), np.full((40, 50, 3), 90, np.uint8))
    (root / 'labels' / 'train' / f'{stem}.txt').write_text(label)


def scan(src, capsys):
    """(class ids per image, the lines load_records printed)."""
    records, _ = load_records(str(src), DATA)
    return [r.cls.tolist() for r in records], capsys.readouterr().out.strip().splitlines()


def bump_mtime(path):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def set_json(cache, **changes):
    d = json.loads(cache.read_text())
    d.update(changes)
    cache.write_text(json.dumps(d))


def tamper_box(cache):
    d = json.loads(cache.read_text())
    d['records'][0]['boxes'][0][0] = 7.5  # far outside [0, 1]
    cache.write_text(json.dumps(d))


CORRUPTIONS = {  # what is done to the cache or the data -> (the reason printed, the classes expected after)
    'truncated': (lambda root, c: c.write_bytes(c.read_bytes()[:len(c.read_bytes()) // 2]),
                  'truncated or not JSON', [[0], [1], [2]]),
    'garbage_bytes': (lambda root, c: c.write_bytes(os.urandom(300)), 'truncated or not JSON', [[0], [1], [2]]),
    'garbage_json': (lambda root, c: c.write_text('[1, 2, 3]'), 'not a label cache (garbage)', [[0], [1], [2]]),
    'tampered': (lambda root, c: tamper_box(c), "malformed contents (the record of 'i0.png')", [[0], [1], [2]]),
    'old_version': (lambda root, c: set_json(c, version=1), f'written by cache version 1 (this is {CACHE_VERSION})',
                    [[0], [1], [2]]),
    'file_added': (lambda root, c: add_image(root, 'i3', '2 0.5 0.5 0.1 0.1\n'),
                   'stale (2 files added since it was written)', [[0], [1], [2], [2]]),
    'file_removed': (lambda root, c: (root / 'images' / 'train' / 'i0.png').unlink(),  # its label goes out too
                     'stale (2 files removed since it was written)', [[1], [2]]),
    'label_changed': (lambda root, c: ((root / 'labels' / 'train' / 'i1.txt').write_text('0 0.5 0.5 0.3 0.3\n'),
                                       bump_mtime(root / 'labels' / 'train' / 'i1.txt')),
                      'stale (1 file changed since it was written)', [[0], [0], [2]]),
}


@pytest.mark.parametrize('kind', CORRUPTIONS)
def test_bad_or_stale_cache_is_rebuilt_with_one_line(tmp_path, capsys, kind):
    damage, reason, expected = CORRUPTIONS[kind]
    src = make_source(tmp_path)
    cache = tmp_path / 'labels' / 'train.cache'
    assert scan(src, capsys)[0] == [[0], [1], [2]] and cache.is_file()
    damage(tmp_path, cache)
    classes, lines = scan(src, capsys)
    assert classes == expected
    notes = [ln for ln in lines if ln.startswith(str(cache))]  # one line: the cache, why, rescanned
    assert len(notes) == 1 and notes[0].startswith(f'{cache}: {reason}') and notes[0].endswith(', rescanned'), lines
    classes, lines = scan(src, capsys)  # the rebuilt cache is used as it is
    assert classes == expected and lines[0].endswith('(from cache)') and len(lines) == 1


def make_read_only(root):
    for folder, _, _ in os.walk(root):
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)


def make_writable(root):
    for folder, _, _ in os.walk(root):
        os.chmod(folder, 0o755)


def listing(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*'))


@pytest.mark.slow
def test_read_only_data_set_still_trains(tmp_path, capsys, private_cache_home):
    import train
    from utils.data.shapes import ensure_shapes
    ensure_shapes(tmp_path / 'ro' / 'shapes', splits={'train': 8, 'val': 4}, img_size=128)
    data = tmp_path / 'ro' / 'ro.yaml'
    data.write_text('path: shapes\ntrain: images/train\nval: images/val\nnames: [circle, square, triangle, star]\n')
    before = listing(tmp_path / 'ro')
    make_read_only(tmp_path / 'ro')
    try:
        for name in ('first', 'second'):
            train.run(data=str(data), cfg='v6/yolov5n.yaml', epochs=1, imgsz=64, batch_size=4, workers=0,
                      noplots=True, noautoanchor=True, cache='disk', project=str(tmp_path / 'runs'), name=name)
            out = capsys.readouterr().out
            if name == 'first':  # both splits: scanned, and told where the cache went
                notes = [ln for ln in out.splitlines() if 'is read-only: label cache kept in' in ln]
                assert len(notes) == 2, out[-3000:]
                assert all(str(private_cache_home / 'labels') in ln for ln in notes)
            else:
                assert out.count('(from cache)') == 2 and 'read-only' not in out, out[-3000:]
    finally:
        make_writable(tmp_path / 'ro')
    assert listing(tmp_path / 'ro') == before  # nothing written into the data set
    assert (tmp_path / 'runs' / 'second' / 'weights' / 'last.pt').is_file()
