"""Scan an image source into one :class:`Record` per usable image, with a :class:`ScanReport`, and cache it.

Every image is verified once (decodable header, size, EXIF orientation, truncated JPEG) and every label row
checked; bad items are skipped and counted with the file and the reason. Results are cached per source in a
``.cache`` JSON file, used only while every input file keeps its size and mtime (below).
The per-format readers live in :mod:`utils.data.label_formats`.

The ``.cache`` file of a scanned image source: where it lives, whether it may be used, and why not.

A cache holds the scan's records and report (above) with the size and mtime of every input file
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from utils.boxes import xyxy2xywh
from utils.data.label_formats import (coco_annotations, coco_category_map, coco_images, coco_inputs, coco_rows,
                                      img2label_path, list_images, load_coco_json, read_voc_xml, read_yolo_label,
                                      voc_ids, voc_inputs, yolo_inputs)
from utils.errors import InputError
from utils.runs import is_writable_dir

COUNTS = ('images', 'found', 'missing', 'empty', 'corrupt', 'dropped')
COORD_TOL = 0.01  # normalised coordinates may stray this far outside [0, 1] before a row counts as corrupt
MIN_IMAGE_SIDE = 10


@dataclass
class Record:
    """One image: its file, original (h, w), and boxes as normalised xywh with per-box class and flags."""
    im_file: str
    shape: tuple
    cls: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    image_id: int = None

    def to_json(self):
        return {'im_file': self.im_file, 'shape': list(self.shape), 'cls': self.cls.tolist(),
                'boxes': self.boxes.tolist(), 'difficult': self.difficult.tolist(),
                'crowd': self.crowd.tolist(), 'image_id': self.image_id}

    @classmethod
    def from_json(cls, d):
        return cls(d['im_file'], tuple(d['shape']), np.array(d['cls'], np.int64),
                   np.array(d['boxes'], np.float32).reshape(-1, 4), np.array(d['difficult'], bool),
                   np.array(d['crowd'], bool), d['image_id'])


@dataclass
class ScanReport:
    """Counts of what a scan found, plus (file, reason) for every skipped or repaired item."""
    images: int = 0  # images listed
    found: int = 0  # label files / annotation entries found
    missing: int = 0  # images without a label (kept as background)
    empty: int = 0  # label present but no boxes
    corrupt: int = 0  # images skipped
    dropped: int = 0  # single boxes dropped (zero size, duplicates, unknown category)
    messages: list = field(default_factory=list)
    cache_note: str = None  # why the cache was not used, or where it went (scan_source); not itself cached

    def add(self, other):
        for k in ('images', 'found', 'missing', 'empty', 'corrupt', 'dropped'):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.messages += other.messages

    def note(self, file, reason):
        self.messages.append((str(file), reason))

    def summary(self):
        return (f'{self.images} images, {self.found} labels found, {self.missing} missing, {self.empty} empty, '
                f'{self.corrupt} corrupt (skipped), {self.dropped} boxes dropped')


# ---------------------------------------------------------------- image ids
def image_id_from_path(path):
    """COCO convention: '000000000139.jpg' -> 139; a non-numeric stem is used as a string id."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def assign_image_ids(records):
    """{im_file: image id} for records: the record's COCO id, else the id from the file name; when
    those collide (same stem in two folders) every image gets its 1-based position in sorted path order."""
    files = [str(r.im_file) for r in records]
    ids = [r.image_id if r.image_id is not None else image_id_from_path(r.im_file) for r in records]
    if len(set(ids)) == len(ids):
        return dict(zip(files, ids))
    return {f: i + 1 for i, f in enumerate(sorted(files))}


# ---------------------------------------------------------------- image verification
def verify_image(path):
    """(h, w) after EXIF orientation, or raise ValueError saying why the image is unusable."""
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
            f.seek(-2, 2)
            tail = f.read(2)
    except OSError as e:
        raise InputError(f'unreadable image ({e.strerror or e})') from None
    if head == b'\xff\xd8' and tail != b'\xff\xd9':
        raise InputError('truncated JPEG (no end-of-image marker)')
    try:
        with Image.open(path) as im:
            im.verify()  # structure check without a full decode
        with Image.open(path) as im:
            w, h = ImageOps.exif_transpose(im).size if _has_rotation(im) else im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f'unreadable image ({type(e).__name__})') from None
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InputError(f'image size {w}x{h} below {MIN_IMAGE_SIDE} px')
    return h, w


def _has_rotation(im):
    try:
        return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap width and height
    except Exception:  # malformed EXIF: keep the stored size
        return False


# ---------------------------------------------------------------- label checks shared by the formats
def check_boxes(cls, xyxy, nc):
    """Validate normalised x1y1x2y2 boxes; returns (clipped xyxy, keep mask, notes) or raises ValueError.

    Rows outside [0, 1] by more than COORD_TOL, or with a class id outside [0, nc), make the image corrupt;
    zero-size boxes and exact duplicates are dropped with a note.
    """
    notes = []
    if len(cls) and (cls.min() < 0 or (nc is not None and cls.max() >= nc)):
        bad = int(cls[(cls < 0) | (cls >= (nc if nc is not None else np.inf))][0])
        raise InputError(f'class id {bad} outside [0, {nc})')
    if len(xyxy) and ((xyxy < -COORD_TOL) | (xyxy > 1 + COORD_TOL)).any():
        row = int(np.nonzero(((xyxy < -COORD_TOL) | (xyxy > 1 + COORD_TOL)).any(1))[0][0])
        raise InputError(f'row {row + 1}: coordinates outside [0, 1]')
    xyxy = xyxy.clip(0, 1)
    positive = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    if not positive.all():
        notes.append(f'{int((~positive).sum())} zero-size box(es) dropped')
    return xyxy, positive, notes


def _finish(record, cls, xyxy, difficult, crowd, nc, report, label_file, dedupe=True):
    """Check boxes, drop zero-size/duplicate rows (noted), and fill ``record``; raises ValueError if corrupt."""
    xyxy, keep, notes = check_boxes(cls, xyxy, nc)
    if dedupe and keep.any():
        rows = np.concatenate((cls[:, None], xyxy), 1)
        _, first = np.unique(rows, axis=0, return_index=True)
        unique = np.zeros(len(cls), bool)
        unique[first] = True
        dups = int((keep & ~unique).sum())
        if dups:
            notes.append(f'{dups} duplicate row(s) removed')
        keep &= unique
    for n in notes:
        report.note(label_file, n)
    report.dropped += int((~keep).sum())
    record.cls, record.boxes = cls[keep].astype(np.int64), xyxy2xywh(xyxy[keep]).astype(np.float32)
    record.difficult, record.crowd = difficult[keep], crowd[keep]
    return record


# ---------------------------------------------------------------- scan loops
def verified_record(im_file, image_id, report):
    """A Record for a decodable image, or None with the problem counted and noted in ``report``."""
    report.images += 1
    try:
        shape = verify_image(im_file)
    except (ValueError, FileNotFoundError) as e:
        report.corrupt += 1
        report.note(im_file, str(e) if isinstance(e, ValueError) else 'image file missing')
        return None
    return Record(str(im_file), shape, image_id=image_id)


def scan_labelled(items, read_labels, nc, what):
    """The scan loop YOLO and VOC share: verify each image, read its annotation file, count and note problems.

    ``items`` yields (image file, annotation file, image id); ``read_labels(file, shape)`` returns
    (cls, xyxy normalised, difficult, crowd) or raises ValueError naming the problem.
    """
    report, records = ScanReport(), []
    for im_file, label_file, image_id in items:
        rec = verified_record(im_file, image_id, report)
        if rec is None:
            continue
        if not Path(label_file).is_file():
            report.missing += 1
            report.note(label_file, f'{what} missing (image kept as background)')
            records.append(rec)
            continue
        report.found += 1
        _keep_or_skip(records, report, rec, label_file, '',
                      lambda: _finish(rec, *read_labels(label_file, rec.shape), nc, report, label_file),
                      (ValueError, OSError, UnicodeDecodeError))
    return records, report


def _keep_or_skip(records, report, rec, where, prefix, finish, errors=(ValueError,)):
    """Run ``finish()`` to fill ``rec`` and keep it; if it raises one of ``errors``, count the image as corrupt
    and note why against ``where``."""
    try:
        finish()
    except errors as e:
        report.corrupt += 1
        report.note(where, f'{prefix}{e} (image skipped)')
        return
    report.empty += not len(rec.cls)
    records.append(rec)


def scan_yolo(src, nc, image_id_from_stem=True):
    """Records and report for one YOLO source (folder, list or image)."""
    def image_id(f):
        stem = Path(f).stem
        return int(stem) if image_id_from_stem and stem.isdigit() else None

    def read(label_file, shape):
        cls, xyxy = read_yolo_label(label_file, nc)
        return cls, xyxy, np.zeros(len(cls), bool), np.zeros(len(cls), bool)

    items = ((f, img2label_path(f), image_id(f)) for f in list_images(src))
    return scan_labelled(items, read, nc, 'label file')


def scan_voc(src, names):
    """Records and report for one VOC image-set list (``ImageSets/Main/<split>.txt``), difficult flags kept."""
    ids, year_dir = voc_ids(src)

    def read(xml_file, shape):
        cls, xyxy, difficult = read_voc_xml(xml_file, names, shape)
        return cls, xyxy, difficult, np.zeros(len(cls), bool)

    items = ((year_dir / 'JPEGImages' / f'{i}.jpg', year_dir / 'Annotations' / f'{i}.xml', None) for i in ids)
    return scan_labelled(items, read, len(names), 'annotation XML')


def scan_coco(src, json_file, nc):
    report, records = ScanReport(), []
    d = load_coco_json(json_file)
    cat_map = coco_category_map(d['categories'])
    anns, dropped = coco_annotations(d)
    _count_dropped(report, json_file, dropped)
    images, skipped = coco_images(d)
    for reason in skipped:
        report.images += 1
        report.corrupt += 1
        report.note(json_file, reason)
    for img in images:
        rec = verified_record(Path(src) / img['file_name'], img['id'], report)
        if rec is None:
            continue
        items = anns.get(img['id'], [])
        report.found += bool(items)
        _keep_or_skip(records, report, rec, json_file, f"image id {img['id']}: ",
                      lambda: _finish_coco(rec, items, cat_map, nc, report, json_file))
    return records, report


def _count_dropped(report, file, reasons):
    report.dropped += len(reasons)
    for reason in reasons:
        report.note(file, reason)


def _finish_coco(rec, items, cat_map, nc, report, json_file):
    rows, dropped = coco_rows(items, cat_map, rec.shape)
    _count_dropped(report, json_file, dropped)
    return _finish(rec, *rows, nc, report, json_file, dedupe=False)


# ---------------------------------------------------------------- cache (the file itself: utils/data/label_scan.py)
def _report_json(report):
    return {**{k: getattr(report, k) for k in COUNTS}, 'messages': report.messages}


def _from_cache(payload, nc):
    """(records, report) from a cache payload; ValueError when its contents are malformed."""
    try:
        report = ScanReport(**{k: int(payload['report'][k]) for k in COUNTS})
        report.messages = [(str(f), str(r)) for f, r in payload['report']['messages']]
        records = [Record.from_json(r) for r in payload['records']]
    except (KeyError, TypeError, ValueError, IndexError, ArithmeticError) as e:
        raise InputError(f'malformed contents ({type(e).__name__})') from None
    for r in records:
        if not (isinstance(r.im_file, str) and len(r.shape) == 2 and all(type(v) is int and v > 0 for v in r.shape)
                and np.isfinite(r.boxes).all() and ((r.boxes >= 0) & (r.boxes <= 1)).all()
                and len(r.cls) == len(r.boxes) == len(r.difficult) == len(r.crowd)
                and ((r.cls >= 0) & (r.cls < (nc or np.inf))).all()):
            raise InputError(f'malformed contents (the record of {Path(str(r.im_file)).name!r:.80})')
    return records, report


def cache_path(src, fmt, json_file=None):
    """Where a source's cache lives: beside its labels (YOLO), its image-set list (VOC) or its JSON (COCO)."""
    src = Path(src)
    if fmt == 'coco':
        return Path(json_file).with_name(f'{Path(json_file).stem}.{src.name}.cache')
    if fmt == 'yolo' and src.is_dir():
        labels = img2label_path(src / 'x.jpg').parent
        return labels.with_suffix('.cache') if labels.is_dir() else src.with_suffix('.cache')
    return src.with_suffix('.cache')


def scan_source(src, fmt, nc, names, json_file=None, use_cache=True):
    """(records, report, from_cache) for one source, using and refreshing its cache. ``report.cache_note`` says
    in one line why a cache was not used (truncated, garbage, another version, stale) or where it went."""
    if fmt == 'yolo':
        inputs, scan = yolo_inputs(src), lambda: scan_yolo(src, nc)
    elif fmt == 'voc':
        inputs, scan = voc_inputs(src), lambda: scan_voc(src, list(names))
    else:
        if json_file is None:
            raise FileNotFoundError(f'{src}: COCO-format source has no instances JSON (set annotations: in the YAML)')
        inputs, scan = coco_inputs(src, json_file), lambda: scan_coco(src, json_file, nc)
    if not use_cache:
        return (*scan(), False)
    key = f'{fmt}|{nc}|{list(names) if names else None}'
    stats = input_stats(inputs)
    cfile, moved = cache_location(cache_path(src, fmt, json_file))
    payload, why = read_cache(cfile, key, stats)
    if payload is not None:
        try:
            return (*_from_cache(payload, nc), True)
        except ValueError as e:
            why = str(e)
    records, report = scan()
    saved = write_cache(cfile, key, stats, [r.to_json() for r in records], _report_json(report))
    notes = [f'{cfile}: {why}, rescanned' if why else '', moved or '', '' if saved else f'{cfile}: not writable, '
             f'label cache not saved (the next run scans again)']
    report.cache_note = '; '.join(n for n in notes if n) or None
    return records, report, False


# ---------------------------------------------------------------- the .cache file
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
