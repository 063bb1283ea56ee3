"""What ``utils.runs.keep_freed_memory`` (detect.py and val.py call it) saves per image on CPU.

    python benchmarks/allocator.py                      # the official yolov5n, 640 px, batch 1, 4 rounds
    python benchmarks/allocator.py --weights ../shared/weights/yolov5s.pt --rounds 6

Each measurement is a fresh process, as a user's detect.py is: it loads the model (fused, as detect.py loads it),
runs ``--warmup`` forwards, then times ``--reps`` forwards and counts the page faults they cause. The processes take
turns, glibc's allocator as it comes then told to keep freed memory, ``--rounds`` times, so a change in the
machine's speed hits both alike; the speedup is the median of each round's ratio. Writes OUT.md and OUT.json
(default benchmarks/results/allocator).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
MODES = ('default', 'keep_freed_memory')


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', default=str(SHARED / 'weights/yolov5n.pt'))
    p.add_argument('--imgsz', type=int, default=640)
    p.add_argument('--rounds', type=int, default=4, help='pairs of processes, the two modes in turn')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--reps', type=int, default=40, help='timed forwards per process (their median is taken)')
    p.add_argument('--out', default=str(ROOT / 'benchmarks/results/allocator'), help='writes OUT.md and OUT.json')
    p.add_argument('--worker', choices=MODES, help=argparse.SUPPRESS)  # one measurement, in this process
    return p.parse_args(argv)


def worker(opt):
    """One process's measurement, printed as JSON: median ms per forward and MB page-faulted per forward."""
    import resource
    import time

    import torch

    from utils.runs import keep_freed_memory
    from utils.weights.checkpoint import load_model
    kept = keep_freed_memory() if opt.worker == 'keep_freed_memory' else False
    model = load_model(opt.weights, fuse=True)
    x = torch.rand(1, 3, opt.imgsz, opt.imgsz, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for _ in range(opt.warmup):
            model(x)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(opt.reps):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    page_mb = os.sysconf('SC_PAGE_SIZE') / 2 ** 20
    print(json.dumps({'mode': opt.worker, 'set': kept, 'ms': statistics.median(times),
                      'fault_mb': faults * page_mb / opt.reps}))


def measure_once(opt, mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}  # glibc as it comes
    cmd = [sys.executable, __file__, '--worker', mode, '--weights', opt.weights, '--imgsz', str(opt.imgsz),
           '--warmup', str(opt.warmup), '--reps', str(opt.reps)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:  # e.g. weights that do not load: the worker's last line says why
        last = (out.stderr.strip().splitlines() or ['no output'])[-1]
        raise SystemExit(f'benchmarks/allocator.py: the {mode} measurement failed: {last}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(opt):
    rounds = [{mode: measure_once(opt, mode) for mode in MODES} for _ in range(opt.rounds)]
    ratios = [r['default']['ms'] / r['keep_freed_memory']['ms'] for r in rounds]
    summary = {mode: {'ms': statistics.median(r[mode]['ms'] for r in rounds),
                      'fault_mb': statistics.median(r[mode]['fault_mb'] for r in rounds)} for mode in MODES}
    return {'rounds': rounds, 'summary': summary, 'speedup': statistics.median(ratios),
            'speedup_range': [min(ratios), max(ratios)], 'set': all(r['keep_freed_memory']['set'] for r in rounds)}


def table(res, opt):
    s = res['summary']
    lo, hi = res['speedup_range']
    lines = [f'{Path(opt.weights).name}, {opt.imgsz} px, batch 1, CPU ({os.cpu_count()} cores); each row the median '
             f'of {opt.rounds} fresh processes, the modes in turn; {opt.reps} timed forwards each.', '',
             '| allocator | ms/image | MB page-faulted per forward |', '|---|---|---|']
    lines += [f"| {mode} | {s[mode]['ms']:.1f} | {s[mode]['fault_mb']:.1f} |" for mode in MODES]
    verdict = f"**{res['speedup']:.2f}x** (rounds {lo:.2f}-{hi:.2f}x)" if res['set'] else \
        'not measured: this C library has no glibc mallopt'
    lines += ['', f'keep_freed_memory against the default, paired per round: {verdict}']
    return '\n'.join(lines)


def main(argv=None):
    opt = parse_opt(argv)
    if opt.worker:
        sys.path.insert(0, str(ROOT))
        return worker(opt)
    cmd = ('python benchmarks/allocator.py ' + ' '.join(sys.argv[1:] if argv is None else argv)).strip()
    res = measure(opt)
    text = table(res, opt)
    print(text)
    out = Path(opt.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.md').write_text(f'# The C allocator and CPU inference\n\n`{cmd}`\n\n{text}\n')
    out.with_suffix('.json').write_text(json.dumps({'command': cmd, 'config': vars(opt),
                                                    'machine': platform.platform(), **res}, indent=1))
    return res


if __name__ == '__main__':
    main()
