"""Loader throughput: training batches with mosaic at 640 (batch 16) for 0/1/2 workers, and the val loader,
next to the training step's images/s at each --step-freeze, so the table says whether the loader keeps up.

    python benchmarks/dataloader.py                      # built-in shapes set, no download
    python benchmarks/dataloader.py --data data/coco128.yaml --batches 10 --json out.json
    python benchmarks/dataloader.py --workers 0 2 4 8 16 --device 0 --step-freeze 0 10   # the device machine

The step is benchmarks/freeze.py's (forward, loss, backward, optimizer, EMA; AMP on CUDA) on batches from the same
data; ``--step-freeze`` with no value skips it. ``--cache`` is train.py's (default auto: RAM when the images fit).
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.data.datasets import CACHE_MODES, check_dataset, create_dataloader  # noqa: E402

sys.path.insert(0, str(ROOT / 'benchmarks'))
from freeze import run_one  # noqa: E402


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


def loader_rows(d, imgsz, batch_size, workers, batches, cache):
    rows = []
    for w in workers:
        loader, _ = create_dataloader(d['train'], imgsz, batch_size, 32, augment=True, shuffle=True, workers=w,
                                      data=d, verbose=False, cache=cache)
        rows.append({'loader': 'train mosaic', 'workers': w, 'img_per_s': images_per_second(loader, batches)})
    loader, _ = create_dataloader(d['val'], imgsz, batch_size, 32, rect=True, workers=0, data=d, verbose=False)
    rows.append({'loader': 'val rect', 'workers': 0, 'img_per_s': images_per_second(loader, batches)})
    return rows


def step_rows(data, imgsz, batch_size, freezes, cfg, device, iters=6):
    """The training step's images/s at each freeze (benchmarks/freeze.py's worker, one process each)."""
    opt = SimpleNamespace(cfg=cfg, data=str(data), imgsz=imgsz, batch_size=batch_size, iters=iters, warmup=2,
                          device=device, batches='', channels_last=False, optimizer_impl='default')
    return [{'freeze': f, 'step_img_per_s': run_one(opt, f, 'all')['images_per_s']} for f in freezes]


def workers_to_keep_up(rows, step_img_per_s):
    """The fewest measured workers whose mosaic loader delivers at least ``step_img_per_s``, or None."""
    fast = [r['workers'] for r in rows if r['loader'] == 'train mosaic' and r['img_per_s'] >= step_img_per_s]
    return min(fast) if fast else None


def run(data='data/shapes.yaml', imgsz=640, batch_size=16, workers=(0, 1, 2), batches=8, json_path=None,
        cache='auto', step_freeze=('0', '10'), step_cfg='v6/yolov5s.yaml', device='cpu'):
    d = check_dataset(data)
    rows = loader_rows(d, imgsz, batch_size, workers, batches, cache)
    steps = step_rows(data, imgsz, batch_size, step_freeze, step_cfg, device) if step_freeze else []
    for s in steps:
        s['workers_to_keep_up'] = workers_to_keep_up(rows, s['step_img_per_s'])
    print(f'{"loader":<14}{"workers":>8}{"images/s":>10}   ({data}, {imgsz}px, batch {batch_size}, cache {cache}, '
          f'{os.cpu_count()} CPUs)')
    for r in rows:
        print(f'{r["loader"]:<14}{r["workers"]:>8}{r["img_per_s"]:>10.1f}')
    if steps:
        print(f'\n{"step, freeze":<14}{"images/s":>18}   loader keeps up with   ({step_cfg}, {device})')
        for s in steps:
            w = s['workers_to_keep_up']
            keeps = f'{w} workers' if w is not None else f'none of {", ".join(map(str, workers))} workers'
            print(f'{s["freeze"]:<14}{s["step_img_per_s"]:>18.1f}   {keeps}')
    result = {'data': str(data), 'imgsz': imgsz, 'batch_size': batch_size, 'batches': batches, 'cache': cache,
              'cpus': os.cpu_count(), 'machine': platform.processor() or platform.machine(), 'results': rows,
              'steps': steps, 'step_cfg': step_cfg, 'device': device}
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
    p.add_argument('--cache', default='auto', choices=CACHE_MODES, help="as train.py's --cache")
    p.add_argument('--step-freeze', nargs='*', default=['0', '10'], help='training step images/s at these freezes')
    p.add_argument('--step-cfg', default='v6/yolov5s.yaml', help='model of the training step')
    p.add_argument('--device', default='cpu', help='device of the training step')
    a = p.parse_args()
    try:
        run(a.data, a.imgsz, a.batch_size, a.workers, a.batches, a.json, a.cache, a.step_freeze, a.step_cfg,
            a.device)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    main()
