"""Read the three annotation formats: YOLO txt, PASCAL VOC XML and COCO instances JSON.

Each reader returns plain arrays (class ids, normalised x1y1x2y2 boxes, flags) or raises ValueError naming the
problem; the COCO readers also return one reason per entry they left out. Readers never touch the scan's report:
:mod:`utils.data.label_scan` calls them, counts what they return and turns it into checked, cached records. ``*_inputs`` list the files whose sizes
and mtimes key a source's cache.
"""
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import defusedxml.ElementTree as DefusedET
import numpy as np
from defusedxml import DefusedXmlException
from utils.errors import InputError

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
    raise InputError(f'{src}: not an image folder, image list (.txt) or image')


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
            raise InputError(f'row {k + 1}: expected 5 columns (class cx cy w h) or a polygon, got {len(row)}')
    try:
        rows = [row if len(row) == 5 else _segment_to_box(row) for row in rows]
        arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
    except ValueError:
        raise InputError('non-numeric value in a label row') from None
    if not np.isfinite(arr).all():
        raise InputError('non-finite value in a label row')
    if len(arr) and (arr[:, 0] != np.round(arr[:, 0])).any():
        raise InputError('class id is not an integer')
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
    """(cls, xyxy normalised, difficult) from one VOC XML for an image of ``shape`` (h, w).

    Parsed with defusedxml: entity declarations (the "billion laughs" expansion, external entities) are refused."""
    try:
        root = DefusedET.parse(xml_file).getroot()
    except DefusedXmlException as e:  # entity name where there is one; external references have none
        what = f"an entity '{e.name}'" if getattr(e, 'name', None) else 'an external entity or DTD'
        raise InputError(f'refused: the XML declares {what}, which could expand without bound or read other '
                         f'files') from None
    except ET.ParseError as e:
        raise InputError(f'malformed XML ({e})') from None
    h, w = shape
    cls, boxes, difficult = [], [], []
    for obj in root.iter('object'):
        name = (obj.findtext('name') or '').strip()
        if name not in names:
            raise InputError(f"unknown class '{name}'")
        bb = obj.find('bndbox')
        try:
            x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ('xmin', 'ymin', 'xmax', 'ymax'))
        except (AttributeError, TypeError, ValueError):
            raise InputError(f"object '{name}': missing or non-numeric bndbox") from None
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
    """A COCO instances file as a dict; a one-line ValueError if it is not JSON, not COCO, or its categories are
    malformed (single bad images and annotations are skipped and counted by the scan instead)."""
    try:
        with open(json_file, encoding='utf-8') as f:
            d = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f'{json_file}: COCO annotation file not found') from None
    except RecursionError:
        raise InputError(f'{json_file}: not usable JSON (nested too deeply)') from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f'{json_file}: not valid JSON ({" ".join(str(e).split())[:200]})') from None
    if not isinstance(d, dict) or not {'images', 'annotations', 'categories'} <= d.keys():
        raise InputError(f"{json_file}: not a COCO instances file (needs 'images', 'annotations', 'categories')")
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(d[key], list):
            raise InputError(f"{json_file}: '{key}' must be a list, got {type(d[key]).__name__}")
    ids = [c.get('id') if isinstance(c, dict) else None for c in d['categories']]
    for k, (c, i) in enumerate(zip(d['categories'], ids)):
        if not _is_int(i) or not isinstance(c.get('name'), str):
            raise InputError(f"{json_file}: categories[{k}] needs an integer 'id' and a string 'name'")
    if len(set(ids)) != len(ids):
        raise InputError(f'{json_file}: category ids are not unique')
    return d


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _is_id(x):
    return _is_int(x) or isinstance(x, str)


def _is_number(v):
    """A finite JSON number (not a bool, not NaN/inf, not an integer too large for a float)."""
    return (_is_int(v) and abs(v) < 2 ** 53) or (isinstance(v, float) and math.isfinite(v))


def coco_category_map(categories):
    """COCO category id -> contiguous class index, in id order (COCO's 91 ids -> 80 classes)."""
    return {c['id']: i for i, c in enumerate(sorted(categories, key=lambda c: c['id']))}


def coco_images(d):
    """(the well-formed image entries, a dict with an int/str 'id' and a 'file_name', sorted by file name;
    one reason per other entry, which the scan counts as a corrupt image)."""
    good, bad = [], []
    for k, img in enumerate(d['images']):
        if isinstance(img, dict) and _is_id(img.get('id')) and isinstance(img.get('file_name'), str) \
                and img['file_name'].strip():
            good.append(img)
        else:
            bad.append(f"images[{k}]: needs an 'id' and a 'file_name' (image skipped)")
    return sorted(good, key=lambda x: x['file_name']), bad


def coco_annotations(d):
    """({image id: [annotation dicts]}, one reason per entry that is not a dict with an int/str image_id)."""
    anns, bad = {}, []
    for k, a in enumerate(d['annotations']):
        if isinstance(a, dict) and _is_id(a.get('image_id')):
            anns.setdefault(a['image_id'], []).append(a)
        else:
            bad.append(f"annotations[{k}]: not an annotation with an 'image_id' (dropped)")
    return anns, bad


def coco_rows(items, cat_map, shape):
    """((cls, xyxy normalised, difficult, crowd) of one image's annotations, one reason per annotation left out:
    unknown categories and malformed boxes)."""
    h, w = shape
    cls, boxes, crowd, bad = [], [], [], []
    for a in items:
        cat, bbox = a.get('category_id'), a.get('bbox')
        if not _is_int(cat) or cat not in cat_map:
            bad.append(f"annotation {a.get('id')!r:.40}: unknown category_id {cat!r:.40}")
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            bad.append(f"annotation {a.get('id')!r:.40}: bbox must be 4 finite numbers [x, y, w, h]")
        else:
            x, y, bw, bh = bbox
            cls.append(cat_map[cat])
            boxes.append((x / w, y / h, (x + bw) / w, (y + bh) / h))
            crowd.append(bool(a.get('iscrowd', 0)))
    n = len(cls)
    rows = (np.array(cls, np.int64), np.array(boxes, np.float64).reshape(-1, 4), np.zeros(n, bool),
            np.array(crowd, bool))
    return rows, bad


def coco_inputs(src, json_file):
    return [str(src), str(json_file)] + list_images(src)
