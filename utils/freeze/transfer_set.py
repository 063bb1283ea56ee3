"""A small transfer-learning data set made from ../shared/data/coco64dev (64 COCO images, 80 classes).

Two variants, each with its own train/val split of the 64 images, stratified so that each class's images are
shared out about evenly between train and val (``stratified_split``):

- ``grouped`` (3 classes): person; vehicle = the 8 COCO vehicle classes; animal = the 10 COCO animal classes.
  Its YAML carries the ``class_map:`` that says so, as a user would write it.
- ``renamed`` (3 classes, each one COCO class under another spelling): ``Person``, ``motor_bike`` (COCO
  motorcycle, through the VOC synonym) and ``Dog``; matched automatically, no ``class_map:`` needed.

Images are copied (never linked: ../shared stays untouched) and labels rewritten under ``datasets/``.

Usage:
    python -m utils.freeze.transfer_set                      # prints datasets/coco64transfer/coco64transfer.yaml
    python -m utils.freeze.transfer_set --variant renamed
    yaml_path = make_transfer_set()                   # from Python (tests, benchmarks)
"""
import argparse
import shutil
from pathlib import Path

import yaml
from utils.errors import InputError

REPO = Path(__file__).resolve().parents[2]  # utils/<wing>/<module>.py
SOURCE = REPO.parent / 'shared' / 'data' / 'coco64dev'
COCO_VEHICLES = ('bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat')
COCO_ANIMALS = ('bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe')
VARIANTS = {
    # data class -> COCO classes its labels come from (also written as the YAML's class_map when grouped)
    'grouped': {'person': ('person',), 'vehicle': COCO_VEHICLES, 'animal': COCO_ANIMALS},
    'renamed': {'Person': ('person',), 'motor_bike': ('motorcycle',), 'Dog': ('dog',)},
}


def _coco_names(source):
    names = yaml.safe_load((source / 'coco64dev.yaml').read_text())['names']
    return [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)


def _relabel(text, new_class):
    """Keep the label rows whose COCO class belongs to a data class, with the data class id."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if parts and int(parts[0]) in new_class:
            rows.append(' '.join([str(new_class[int(parts[0])]), *parts[1:]]))
    return ''.join(r + '\n' for r in rows)


def stratified_split(labels, nc):
    """{image: 'train' | 'val'} with each class's images shared out about evenly: images are taken by their rarest
    class (in fewest images overall; images without boxes last), and each goes to the half holding fewer images
    of that class (ties: fewer images in all, then train). Deterministic."""
    present = {im: sorted({int(line.split()[0]) for line in text.splitlines() if line.strip()})
               for im, text in labels.items()}
    count = [sum(k in c for c in present.values()) for k in range(nc)] + [len(labels)]  # slot nc: no boxes
    rarest = {im: min(c, key=lambda k: (count[k], k)) if c else nc for im, c in present.items()}
    seen = {'train': [0] * (nc + 2), 'val': [0] * (nc + 2)}  # images per class, no boxes, in all
    split = {}
    for im in sorted(labels, key=lambda im: (count[rarest[im]], rarest[im], im.name)):
        k = rarest[im]
        half = min(seen, key=lambda h: (seen[h][k], seen[h][nc + 1], h != 'train'))
        split[im] = half
        for c in present[im] or [nc]:
            seen[half][c] += 1
        seen[half][nc + 1] += 1
    return dict(sorted(split.items()))


def make_transfer_set(variant='grouped', out=None, source=SOURCE):
    """Build the variant under ``out`` (default ``datasets/coco64<variant>``) once; returns its data YAML path."""
    if variant not in VARIANTS:
        raise InputError(f"transfer set variant '{variant}': expected one of {', '.join(VARIANTS)}")
    source = Path(source)
    if not (source / 'coco64dev.yaml').is_file():
        raise FileNotFoundError(f'{source}: coco64dev not found (expected coco64dev.yaml there)')
    name = 'coco64transfer' if variant == 'grouped' else f'coco64{variant}'
    out = Path(out) if out else REPO / 'datasets' / name
    data_yaml = out / f'{name}.yaml'
    if data_yaml.is_file():
        return data_yaml
    groups = VARIANTS[variant]
    coco = _coco_names(source)
    new_class = {coco.index(c): i for i, members in enumerate(groups.values()) for c in members}
    labels = {}
    for im in sorted((source / 'images' / 'train2017').glob('*.jpg')):
        label = source / 'labels' / 'train2017' / f'{im.stem}.txt'
        labels[im] = _relabel(label.read_text(), new_class) if label.is_file() else ''
    for im, split in stratified_split(labels, len(groups)).items():
        (out / 'images' / split).mkdir(parents=True, exist_ok=True)
        (out / 'labels' / split).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(im, out / 'images' / split / im.name)
        (out / 'labels' / split / f'{im.stem}.txt').write_text(labels[im])
    cfg = {'path': '.', 'train': 'images/train', 'val': 'images/val', 'nc': len(groups), 'names': list(groups)}
    if variant == 'grouped':
        cfg['class_map'] = {k: list(v) for k, v in groups.items()}
    comment = (f'# coco64dev relabelled into {len(groups)} classes ({variant}); made by python -m utils.freeze.transfer_set'
               f'{" --variant " + variant if variant != "grouped" else ""}\n')
    tmp = data_yaml.with_suffix('.tmp')
    tmp.write_text(comment + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
    tmp.replace(data_yaml)  # the YAML appears last: a half-built set is rebuilt next time
    return data_yaml


def main(argv=None):
    p = argparse.ArgumentParser(description='Build a 3-class transfer set from ../shared/data/coco64dev.')
    p.add_argument('--variant', default='grouped', choices=list(VARIANTS))
    p.add_argument('--out', default=None, help='output folder (default datasets/coco64<variant>)')
    p.add_argument('--source', default=str(SOURCE), help='the coco64dev folder')
    opt = p.parse_args(argv)
    try:
        print(make_transfer_set(opt.variant, opt.out, opt.source))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
    main()
