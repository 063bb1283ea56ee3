"""Read the three annotation formats: YOLO txt, PASCAL VOC XML and COCO instances JSON.

Each reader returns plain arrays (class ids, normalised x1y1x2y2 boxes, flags) or raises ValueError naming the
problem; :mod:`utils.label_scan` turns them into checked, cached records. ``*_inputs`` list the files whose sizes
and mtimes key a source's cache.
"""
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

IMG_FORMATS = ('.bmp', '.jpeg', '.jpg', '.png', '.tif', '.tiff', '.webp', '.dng', '.mpo', '.pfm')


# ---------------------------------------------------------------- YOLO txt
def img2label_path(im_file):
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` (the last ``images`` folder is swapped)."""
    parts = Path(im_file).parts
    idx = max((i for i, p in enumerate(parts) if p == 'images'), default=None)
    if idx is None:
        return Path(im_file).with_suffix('.txt')
    return Path(*parts[:idx], 'labels', *parts[idx + 1:]).with_suffix('.txt')


def list_images(src):
    """Image files of a folder (recursive), a .txt list (paths relative to the list's folder) or one image."""
    src = Path(src)
    if src.is_dir():
        return sorted(str(p) for p in src.rglob('*') if p.suffix.lower() in IMG_FORMATS)
    if src.is_file() and src.suffix == '.txt':
        lines = [ln.strip() for ln in src.read_text().splitlines() if ln.strip()]
        return sorted(str(p if Path(p).is_absolute() else (src.parent / p).resolve()) for p in lines
                      if Path(p).suffix.lower() in IMG_FORMATS)
    if src.is_file() and src.suffix.lower() in IMG_FORMATS:
        return [str(src)]
    if not src.exists():
        raise FileNotFoundError(f'{src}: image source not found')
    raise ValueError(f'{src}: not an image folder, image list (.txt) or image')


def _segment_to_box(row):
    """A YOLOv5 segment row (class x1 y1 x2 y2 ...) as a box row (class cx cy w h) around the polygon."""
    xy = np.array(row[1:], dtype=np.float64).reshape(-1, 2)
    (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
    return [row[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def read_yolo_label(label_file, nc):
    """(cls int (n,), xyxy normalised (n, 4)) from a YOLO txt; raises ValueError naming the bad row.

    Rows are boxes (class cx cy w h) or, as in YOLOv5's segment labels, polygons (class x1 y1 x2 y2 x3 y3 ...),
    which become the box around them."""
    rows = [ln.split() for ln in Path(label_file).read_text().splitlines() if ln.strip()]
    for k, row in enumerate(rows):
        if len(row) != 5 and not (len(row) >= 7 and len(row) % 2):
            raise ValueError(f'row {k + 1}: expected 5 columns (class cx cy w h) or a polygon, got {len(row)}')
    try:
        rows = [row if len(row) == 5 else _segment_to_box(row) for row in rows]
        arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    except ValueError:
        raise ValueError('non-numeric value in a label row') from None
    if not np.isfinite(arr).all():
        raise ValueError('non-finite value in a label row')
    if len(arr) and (arr[:, 0] != np.round(arr[:, 0])).any():
        raise ValueError('class id is not an integer')
    xywh = arr[:, 1:]
    xyxy = np.concatenate((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    return arr[:, 0].astype(np.int64), xyxy


def yolo_inputs(src):
    files = list_images(src)
    return files + [str(img2label_path(f)) for f in files] + [str(src)]


# ---------------------------------------------------------------- PASCAL VOC XML
def voc_ids(src):
    """Image ids listed in a VOC ``ImageSets/Main/<split>.txt`` and the year folder they live in."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f'{src}: VOC image-set list not found')
    year_dir = src.parents[2]
    ids = [ln.split()[0] for ln in src.read_text().splitlines() if ln.strip()]
    return ids, year_dir


def read_voc_xml(xml_file, names, shape):
    """(cls, xyxy normalised, difficult) from one VOC XML for an image of ``shape`` (h, w)."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise ValueError(f'malformed XML ({e})') from None
    h, w = shape
    cls, boxes, difficult = [], [], []
    for obj in root.iter('object'):
        name = (obj.findtext('name') or '').strip()
        if name not in names:
            raise ValueError(f"unknown class '{name}'")
        bb = obj.find('bndbox')
        try:
            x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ('xmin', 'ymin', 'xmax', 'ymax'))
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"object '{name}': missing or non-numeric bndbox") from None
        cls.append(names.index(name))
        boxes.append(((x1 - 1) / w, (y1 - 1) / h, x2 / w, y2 / h))  # 1-based inclusive pixels -> edges
        difficult.append((obj.findtext('difficult') or '0').strip() == '1')
    return np.array(cls, np.int64), np.array(boxes, np.float64).reshape(-1, 4), np.array(difficult, bool)


def voc_inputs(src):
    ids, year_dir = voc_ids(src)
    return [str(src)] + [str(year_dir / d / f'{i}{s}') for i in ids
                         for d, s in (('JPEGImages', '.jpg'), ('Annotations', '.xml'))]


# ---------------------------------------------------------------- COCO instances JSON
def load_coco_json(json_file):
    try:
        with open(json_file) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f'{json_file}: COCO annotation file not found') from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f'{json_file}: not valid JSON ({e})') from None
    if not isinstance(d, dict) or not {'images', 'annotations', 'categories'} <= d.keys():
        raise ValueError(f"{json_file}: not a COCO instances file (needs 'images', 'annotations', 'categories')")
    return d


def coco_category_map(categories):
    """COCO category id -> contiguous class index, in id order (COCO's 91 ids -> 80 classes)."""
    return {c['id']: i for i, c in enumerate(sorted(categories, key=lambda c: c['id']))}


def coco_rows(items, cat_map, shape, report, json_file):
    h, w = shape
    cls, boxes, crowd = [], [], []
    for a in items:
        if a.get('category_id') not in cat_map:
            report.dropped += 1
            report.note(json_file, f"annotation {a.get('id')}: unknown category_id {a.get('category_id')}")
            continue
        x, y, bw, bh = a['bbox']
        cls.append(cat_map[a['category_id']])
        boxes.append((x / w, y / h, (x + bw) / w, (y + bh) / h))
        crowd.append(bool(a.get('iscrowd', 0)))
    n = len(cls)
    return (np.array(cls, np.int64), np.array(boxes, np.float64).reshape(-1, 4), np.zeros(n, bool),
            np.array(crowd, bool))


def coco_inputs(src, json_file):
    return [str(src), str(json_file)] + list_images(src)
