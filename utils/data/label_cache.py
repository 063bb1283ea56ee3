"""The ``.cache`` file of a scanned image source: where it lives, whether it may be used, and why not.

A cache holds the scan's records and report (``utils.data.label_scan``) with the size and mtime of every input file
(images, label files, the list or JSON) and a key for what the scan depended on (format, classes). It is used
only when all of that still matches; otherwise the source is scanned again and the reason is one line:

    labels/train.cache: stale (1 file added, 2 changed since it was written), rescanned
    labels/train.cache: truncated or not JSON, rescanned
    labels/train.cache: written by cache version 1 (this is 2), rescanned

It is written beside the labels (YOLO), the image-set list (VOC) or the JSON (COCO), or, where that folder is
read-only (no write permission bits, e.g. a shared data set), under ``$YOLOV5_FREEZE_CACHE/labels`` (default
``~/.cache/yolov5-freeze/labels``), named by a hash of where it would have been. Writes are atomic.
"""
import hashlib
import json
import os
import stat
from pathlib import Path

from utils.runs import is_writable_dir

CACHE_VERSION = 2  # 2: per-file sizes and mtimes (1 kept one hash of them all)


def fallback_root():
    base = os.environ.get('YOLOV5_FREEZE_CACHE') or Path.home() / '.cache' / 'yolov5-freeze'
    return Path(base) / 'labels'


def cache_location(preferred):
    """(cache file, note): ``preferred`` where its folder is writable, else a file under ``fallback_root()``
    and a note saying so."""
    preferred = Path(preferred)
    if is_writable_dir(preferred.parent):
        return preferred, None
    digest = hashlib.sha1(str(preferred.resolve()).encode()).hexdigest()[:16]
    moved = fallback_root() / f'{digest}.{preferred.name}'
    return moved, f'{preferred.parent} is read-only: label cache kept in {moved}'


def input_stats(paths):
    """{path: [size, mtime_ns]} of every input file, None for a missing one. Folders are left out: what they
    hold is listed among the inputs already."""
    stats = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            stats[str(p)] = None
            continue
        if not stat.S_ISDIR(st.st_mode):
            stats[str(p)] = [st.st_size, st.st_mtime_ns]
    return stats


def staleness(saved, current):
    """'' when the inputs match, else e.g. '1 file added, 2 changed'."""
    added = sum(1 for p, s in current.items() if s is not None and saved.get(p) is None)
    removed = sum(1 for p, s in saved.items() if s is not None and current.get(p) is None)
    changed = sum(1 for p, s in current.items() if s is not None and saved.get(p) not in (None, s))
    parts = [f'{n} {verb}' for n, verb in ((added, 'added'), (removed, 'removed'), (changed, 'changed')) if n]
    if parts:  # '2 files added, 1 removed'
        n, verb = parts[0].split(' ', 1)
        parts[0] = f"{n} file{'s' if n != '1' else ''} {verb}"
    return ', '.join(parts)


def read_cache(cache_file, key, stats):
    """(payload, None) when ``cache_file`` is usable for these inputs, else (None, why not); why is None when
    there is no cache yet."""
    cache_file = Path(cache_file)
    if not cache_file.exists():
        return None, None
    try:
        d = json.loads(cache_file.read_text(encoding='utf-8'))
    except RecursionError:
        return None, 'nested too deeply to be a cache'
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, 'truncated or not JSON' if isinstance(e, ValueError) else f'unreadable ({e.strerror or e})'
    if not isinstance(d, dict) or not isinstance(d.get('records'), list) or not isinstance(d.get('files'), dict):
        if isinstance(d, dict) and d.get('version') not in (None, CACHE_VERSION):
            return None, f"written by cache version {d['version']!r:.20} (this is {CACHE_VERSION})"
        return None, 'not a label cache (garbage)'
    if d.get('version') != CACHE_VERSION:
        return None, f"written by cache version {d.get('version')!r:.20} (this is {CACHE_VERSION})"
    if d.get('key') != key:
        return None, 'written for another format or other classes'
    what = staleness(d['files'], stats)
    if what:
        return None, f'stale ({what} since it was written)'
    return d, None


def write_cache(cache_file, key, stats, records, report):
    """Write the payload atomically (``records``/``report``: JSON-ready). False where it cannot be written."""
    cache_file = Path(cache_file)
    payload = {'version': CACHE_VERSION, 'key': key, 'files': stats, 'records': records, 'report': report}
    tmp = cache_file.with_name(f'.{cache_file.name}.{os.getpid()}.tmp')
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload), encoding='utf-8')
        os.replace(tmp, cache_file)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
