"""Where a training run's wall time goes, phase by phase (utils/runs.py), for several --freeze settings.

    python benchmarks/phases.py                          # 2 epochs, v3.1 yolov5s, 320 px, 128 synthetic images
    python benchmarks/phases.py --freeze 0 10 --rounds 2 -- --weights ../shared/weights/yolov5n.pt \\
        --data ../shared/data/coco64dev/coco64dev.yaml --cfg '' --epochs 20

Each setting runs as its own process (``--worker``), the settings taking turns over ``--rounds``; the fastest
round of each is kept. A worker times its own imports, then calls ``train.main`` with a ``PhaseTimer`` and prints
the full breakdown (total per phase and per epoch) and a JSON line. Arguments after ``--`` go to train.py.
Prints the tables side by side and writes benchmarks/results/phases.json.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(train_args):
    """One training run in this process; prints its full breakdown, then the breakdown as one JSON line."""
    sys.path.insert(0, str(ROOT))
    from utils.runs import PhaseTimer
    timer = PhaseTimer.since_process_start()
    with timer.phase('imports'):
        import train
    train.main(train.parse_opt(train_args), phases=timer)
    print(timer.table())
    print(json.dumps(timer.as_dict()))


def default_train_args(work):
    """The issue's from-scratch run: v3.1 yolov5s, 320 px, batch 16, 2 epochs on 128 synthetic images."""
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from upstream import synthetic_data
    data = synthetic_data(work, 128)['ours']
    return ['--cfg', 'yolov5s.yaml', '--data', str(data), '--imgsz', '320', '--batch-size', '16', '--epochs', '2',
            '--weights', '']


def run_worker(train_args, freeze, work, log):
    cmd = [sys.executable, __file__, '--worker', '--', *train_args, '--freeze', freeze, '--project', str(work / 'runs'),
           '--name', f'f{freeze}', '--exist-ok']
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    log.write_text(out.stdout + out.stderr)
    if out.returncode:
        sys.exit(f'error: freeze {freeze} failed ({log}):\n' + '\n'.join(out.stderr.strip().splitlines()[-3:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_side_by_side(best):
    names = []
    for r in best.values():
        names += [n for n in r['totals_s'] if n not in names]
    print(f"\n{'phase':<26}" + ''.join(f"{'freeze ' + f:>14}" for f in best))
    for name in [*names, 'other', 'wall time']:
        cells = []
        for r in best.values():
            s = r['wall_s'] if name == 'wall time' else r['other_s'] if name == 'other' else r['totals_s'].get(name, 0.0)
            cells.append(f'{s:>8.1f} {100 * s / r["wall_s"]:>4.0f}%')
        print(f'{name:<26}' + ''.join(f'{c:>14}' for c in cells))
    walls = [r['wall_s'] for r in best.values()]
    if len(walls) > 1:
        train = [r['totals_s'].get('train', 0.0) for r in best.values()]
        print(f'whole run {walls[0] / walls[-1]:.2f}x faster at the last setting than the first; '
              f'the train phase alone {train[0] / max(train[-1], 1e-9):.2f}x')


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--freeze', nargs='+', default=['0', '10'])
    p.add_argument('--rounds', type=int, default=1)
    p.add_argument('--work', default=str(ROOT / 'runs/phases'))
    p.add_argument('--json', default=str(ROOT / 'benchmarks/results/phases.json'))
    argv = sys.argv[1:]
    split = argv.index('--') if '--' in argv else len(argv)
    opt, train_args = p.parse_args(argv[:split]), argv[split + 1:]
    if opt.worker:
        return worker(train_args)
    work = Path(opt.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args = [*default_train_args(work), *train_args]
    load_before, best = os.getloadavg(), {}
    for _ in range(opt.rounds):
        for f in opt.freeze:
            r = run_worker(args, f, work, work / f'log-f{f}.txt')
            if f not in best or r['wall_s'] < best[f]['wall_s']:
                best[f] = r
    for f, r in best.items():
        print(f'\nfreeze {f}: full breakdown in {work / f"log-f{f}.txt"}')
    print_side_by_side(best)
    load = {'before': load_before, 'after': os.getloadavg()}
    print(f"load average (1, 5, 15 min): before {load['before']}, after {load['after']}")
    out = Path(opt.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'train_args': args, 'rounds': opt.rounds, 'load_average': load, 'freeze': best},
                              indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
