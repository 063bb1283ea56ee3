"""Loader throughput: training batches with mosaic at 640 (batch 16) for 0/1/2 workers, and the val loader.

    python benchmarks/dataloader.py                      # built-in shapes set, no download
    python benchmarks/dataloader.py --data data/coco128.yaml --batches 10 --json out.json
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.data.datasets import check_dataset, create_dataloader  # noqa: E402


def images_per_second(loader, batches):
    """Time ``batches`` batches after one warm-up batch (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            n += len(next(it)[0])
        except StopIteration:
            break
    return n / (time.perf_counter() - t0)


def run(data='data/shapes.yaml', imgsz=640, batch_size=16, workers=(0, 1, 2), batches=8, json_path=None):
    d = check_dataset(data)
    rows = []
    for w in workers:
        loader, _ = create_dataloader(d['train'], imgsz, batch_size, 32, augment=True, shuffle=True, workers=w,
                                      data=d, verbose=False)
        rows.append({'loader': 'train mosaic', 'workers': w, 'img_per_s': images_per_second(loader, batches)})
    loader, _ = create_dataloader(d['val'], imgsz, batch_size, 32, rect=True, workers=0, data=d, verbose=False)
    rows.append({'loader': 'val rect', 'workers': 0, 'img_per_s': images_per_second(loader, batches)})
    print(f'{"loader":<14}{"workers":>8}{"images/s":>10}   ({data}, {imgsz}px, batch {batch_size}, '
          f'{os.cpu_count()} CPUs)')
    for r in rows:
        print(f'{r["loader"]:<14}{r["workers"]:>8}{r["img_per_s"]:>10.1f}')
    result = {'data': str(data), 'imgsz': imgsz, 'batch_size': batch_size, 'batches': batches,
              'cpus': os.cpu_count(), 'machine': platform.processor() or platform.machine(), 'results': rows}
    out = Path(json_path or ROOT / 'benchmarks' / 'results' / 'dataloader.json')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f'wrote {out}')
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='data/shapes.yaml')
    p.add_argument('--imgsz', type=int, default=640)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--batches', type=int, default=8, help='timed batches per setting (after one warm-up)')
    p.add_argument('--json', default=None, help='output JSON (default benchmarks/results/dataloader.json)')
    a = p.parse_args()
    try:
        run(a.data, a.imgsz, a.batch_size, a.workers, a.batches, a.json)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    main()
