"""Scan an image source into one :class:`Record` per usable image, with a :class:`ScanReport`, and cache it.

Every image is verified once (decodable header, size, EXIF orientation, truncated JPEG) and every label row
checked; bad items are skipped and counted with the file and the reason. Results are cached per source in a
``.cache`` JSON file keyed by a hash of paths, sizes and mtimes. The per-format readers live in
:mod:`utils.label_formats`.
"""
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from utils.boxes import xyxy2xywh
from utils.label_formats import (coco_annotations, coco_category_map, coco_images, coco_inputs, coco_rows,
                                 img2label_path, list_images, load_coco_json, read_voc_xml, read_yolo_label, voc_ids,
                                 voc_inputs, yolo_inputs)
from utils.runs import is_writable_dir

CACHE_VERSION = 1
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
        raise ValueError(f'unreadable image ({e.strerror or e})') from None
    if head == b'\xff\xd8' and tail != b'\xff\xd9':
        raise ValueError('truncated JPEG (no end-of-image marker)')
    try:
        with Image.open(path) as im:
            im.verify()  # structure check without a full decode
        with Image.open(path) as im:
            w, h = ImageOps.exif_transpose(im).size if _has_rotation(im) else im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f'unreadable image ({type(e).__name__})') from None
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(f'image size {w}x{h} below {MIN_IMAGE_SIDE} px')
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
        raise ValueError(f'class id {bad} outside [0, {nc})')
    if len(xyxy) and ((xyxy < -COORD_TOL) | (xyxy > 1 + COORD_TOL)).any():
        row = int(np.nonzero(((xyxy < -COORD_TOL) | (xyxy > 1 + COORD_TOL)).any(1))[0][0])
        raise ValueError(f'row {row + 1}: coordinates outside [0, 1]')
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
        try:
            cls, xyxy, difficult, crowd = read_labels(label_file, rec.shape)
            _finish(rec, cls, xyxy, difficult, crowd, nc, report, label_file)
        except (ValueError, OSError, UnicodeDecodeError) as e:
            report.corrupt += 1
            report.note(label_file, f'{e} (image skipped)')
            continue
        report.empty += not len(rec.cls)
        records.append(rec)
    return records, report


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
    anns = coco_annotations(d, json_file, report)
    for img in coco_images(d, json_file, report):
        rec = verified_record(Path(src) / img['file_name'], img['id'], report)
        if rec is None:
            continue
        items = anns.get(img['id'], [])
        report.found += bool(items)
        try:
            _finish(rec, *coco_rows(items, cat_map, rec.shape, report, json_file), nc, report, json_file,
                    dedupe=False)
        except ValueError as e:
            report.corrupt += 1
            report.note(json_file, f"image id {img['id']}: {e} (image skipped)")
            continue
        report.empty += not len(rec.cls)
        records.append(rec)
    return records, report


# ---------------------------------------------------------------- cache
def files_hash(paths, extra=''):
    """Hash of paths with their sizes and mtimes (absent files hash as absent)."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f'{p}|{st.st_size}|{st.st_mtime_ns}\n'.encode())
        except OSError:
            h.update(f'{p}|-\n'.encode())
    return h.hexdigest()


def load_cache(cache_file, key):
    """Cached (records, report) when the file is readable and its key matches, else None."""
    try:
        d = json.loads(Path(cache_file).read_text())
        if d.get('version') != CACHE_VERSION or d.get('hash') != key:
            return None
        report = ScanReport(**{k: v for k, v in d['report'].items() if k != 'messages'})
        report.messages = [tuple(m) for m in d['report']['messages']]
        return [Record.from_json(r) for r in d['records']], report
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_cache(cache_file, key, records, report):
    """Write the cache atomically; silently skipped where the folder is read-only (e.g. shared data)."""
    cache_file = Path(cache_file)
    folder = cache_file.parent
    if not is_writable_dir(folder):
        return False
    payload = {'version': CACHE_VERSION, 'hash': key, 'records': [r.to_json() for r in records],
               'report': {**{k: getattr(report, k) for k in ('images', 'found', 'missing', 'empty', 'corrupt',
                                                                 'dropped')}, 'messages': report.messages}}
    tmp = cache_file.with_name(f'.{cache_file.name}.{os.getpid()}.tmp')
    try:
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, cache_file)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


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
    """(records, report, from_cache) for one source, using and refreshing its cache."""
    if fmt == 'yolo':
        inputs, scan = yolo_inputs(src), lambda: scan_yolo(src, nc)
    elif fmt == 'voc':
        inputs, scan = voc_inputs(src), lambda: scan_voc(src, list(names))
    else:
        if json_file is None:
            raise FileNotFoundError(f'{src}: COCO-format source has no instances JSON (set annotations: in the YAML)')
        inputs, scan = coco_inputs(src, json_file), lambda: scan_coco(src, json_file, nc)
    key = files_hash(inputs, extra=f'{fmt}|{nc}|{list(names) if names else None}')
    cfile = cache_path(src, fmt, json_file)
    if use_cache and (hit := load_cache(cfile, key)) is not None:
        return hit[0], hit[1], True
    records, report = scan()
    if use_cache:
        save_cache(cfile, key, records, report)
    return records, report, False
