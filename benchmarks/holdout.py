"""A hold-out split of a VOC data set's training list, for choosing a recipe without touching its test list.

    python benchmarks/holdout.py --data ../shared/data/voc07mini/voc07mini.yaml --out datasets/voc07holdout

Writes ``<out>/VOCdevkit/<year>/ImageSets/Main/{train,holdout}.txt`` (every ``--every``-th id of the training
list, in sorted order, goes to ``holdout``; the rest to ``train``), links the year's ``JPEGImages`` and
``Annotations`` folders, and writes ``<out>/<name>.yaml`` with ``train: train.txt`` and ``val: holdout.txt``, the
same names, format and eval rule. The test list is not copied, so nothing trained or searched on this set can
see it.
"""
import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.errors import InputError  # noqa: E402


def split_ids(ids, every):
    """(train ids, hold-out ids): every ``every``-th id (1-based) is held out."""
    ids = sorted(ids)
    held = ids[every - 1::every]
    kept = [i for i in ids if i not in set(held)]
    return kept, held


def make_holdout(data, out, every=5):
    from utils.data.config import check_dataset
    from utils.data.label_formats import voc_ids
    d = check_dataset(data)
    if d['format'] != 'voc' or len(d['train']) != 1:
        raise InputError(f'{data}: needs a VOC data YAML with one train list')
    ids, year_dir = voc_ids(d['train'][0])
    train, held = split_ids(ids, every)
    out = Path(out).resolve()
    year = out / 'VOCdevkit' / year_dir.name
    (year / 'ImageSets' / 'Main').mkdir(parents=True, exist_ok=True)
    for sub in ('JPEGImages', 'Annotations'):
        link = year / sub
        if not link.exists():
            link.symlink_to(year_dir / sub, target_is_directory=True)
    lists = year / 'ImageSets' / 'Main'
    (lists / 'train.txt').write_text(''.join(f'{i}\n' for i in train))
    (lists / 'holdout.txt').write_text(''.join(f'{i}\n' for i in held))
    cfg = {'path': str(out), 'format': 'voc', 'eval': d['eval'],
           'train': f'VOCdevkit/{year_dir.name}/ImageSets/Main/train.txt',
           'val': f'VOCdevkit/{year_dir.name}/ImageSets/Main/holdout.txt', 'nc': d['nc'], 'names': d['names']}
    path = out / f'{out.name}.yaml'
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f'{path}: {len(train)} train / {len(held)} hold-out ids from {d["train"][0]}')
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default=str(ROOT.parent / 'shared/data/voc07mini/voc07mini.yaml'))
    ap.add_argument('--out', default=str(ROOT / 'datasets/voc07holdout'))
    ap.add_argument('--every', type=int, default=5, help='hold out every N-th training id')
    opt = ap.parse_args(argv)
    make_holdout(opt.data, opt.out, opt.every)


if __name__ == '__main__':
    main()
