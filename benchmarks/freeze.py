"""What freezing saves: the same short training with several --freeze settings, side by side in one run.

    python benchmarks/freeze.py                                   # yolov5s, 320 px, batch 16, CPU, freeze 0/10/all
    python benchmarks/freeze.py --freeze 10 --fast-path none fold no_grad channels_last all --interleave
    python benchmarks/freeze.py --device 0 --imgsz 640 --iters 30   # on a GPU: AMP, cudnn.benchmark, peak memory
    python benchmarks/freeze.py --device 0 --imgsz 640 --channels-last --optimizer-impl fused   # GPU step candidates

Each setting runs in its own process (so peak RSS is its own) on the same pre-loaded mosaic batches from the
shapes dataset; a step is forward + loss + backward + optimizer step + EMA update, as in train.py. ``--fast-path``
picks the frozen fast path's ideas (models/fastpath.py: fold, no_grad, channels_last; ``all`` is what freeze()
turns on, ``none`` the plain forward). ``--channels-last`` trains the whole model and its input in NHWC order and
``--optimizer-impl foreach|fused`` picks torch's multi-tensor or fused optimizer step: candidates for a faster step
on a GPU (tensor cores prefer NHWC), not used by train.py until measured there. Prints a table and writes JSON
(default benchmarks/results/freeze.json).
"""
import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.errors import InputError  # noqa: E402


def collect_batches(data, imgsz, batch_size, n, seed=0):
    from utils.data.datasets import check_dataset, create_dataloader, load_hyp
    d = check_dataset(data)
    hyp = load_hyp(ROOT / 'data/hyps/hyp.scratch.yaml')
    loader, _ = create_dataloader(d['train'], imgsz, batch_size, 32, hyp=hyp, augment=True, workers=0,
                                  shuffle=True, seed=seed, data=d)
    batches = []
    while len(batches) < n:
        for imgs, targets, _, _ in loader:
            batches.append((imgs, targets))
            if len(batches) == n:
                break
    return batches, d['nc'], len(loader)


def load_batches(opt):
    """(batches, nc, batches per epoch): from ``--batches`` (a file written by ``--save-batches``, which
    benchmarks/upstream.py shares with upstream's step) or freshly loaded."""
    import torch
    if opt.batches:
        d = torch.load(opt.batches)
        return d['batches'][:opt.warmup + opt.iters], d['nc'], d['nb']
    return collect_batches(opt.data, opt.imgsz, opt.batch_size, opt.warmup + opt.iters)


def save_batches(opt, path):
    import torch
    batches, nc, nb = collect_batches(opt.data, opt.imgsz, opt.batch_size, opt.warmup + opt.iters)
    torch.save({'batches': batches, 'nc': nc, 'nb': nb}, path)


FAST_PATH_IDEAS = ('fold', 'no_grad', 'channels_last')


def fast_path_flags(variant):
    """'all', 'none' or ideas joined by '+' (fold+channels_last) -> keyword flags for set_frozen_fast_path."""
    ideas = set(FAST_PATH_IDEAS) if variant == 'all' else set() if variant == 'none' else set(variant.split('+'))
    unknown = ideas - set(FAST_PATH_IDEAS)
    if unknown:
        raise InputError(f"--fast-path {variant}: unknown {', '.join(sorted(unknown))} (expected all, none or "
                         f"{'+'.join(FAST_PATH_IDEAS)} or part of it)")
    return {k: k in ideas for k in FAST_PATH_IDEAS}


def apply_fast_path(model, variant):
    flags = fast_path_flags(variant)
    if any(flags.values()):
        model.set_frozen_fast_path(**flags)
    else:
        model.set_frozen_fast_path(None)


def build_setting(opt, spec, variant, device, nc):
    """One setting ready to train: model frozen by ``spec`` with fast path ``variant``, loss, optimizer, EMA."""
    import torch
    from models.yolo import Model
    from utils.data.datasets import load_hyp
    from utils.train.engine import ModelEMA
    from utils.freeze.plan import FreezePlan, freeze_summary
    from utils.train.loss import ComputeLoss, scale_loss_gains
    from utils.freeze.optim import build_optimizer

    torch.manual_seed(0)
    model = Model(opt.cfg, nc=nc).to(device)
    plan = FreezePlan.from_spec(spec, model).apply(model)
    apply_fast_path(model, variant)
    share = freeze_summary(model, opt.imgsz)['frozen_flops_share']
    hyp = load_hyp(ROOT / 'data/hyps/hyp.scratch.yaml')
    amp = device.type == 'cuda'
    if opt.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEMA(model)
    ema.set_frozen(plan.ema_skip)
    model.train()
    return {'freeze': spec, 'fast_path': variant, 'model': model, 'share': share, 'amp': amp, 'ema': ema,
            'channels_last': opt.channels_last, 'optimizer_impl': opt.optimizer_impl,
            'loss': ComputeLoss(model, scale_loss_gains(hyp, model.model[-1].nl, nc, opt.imgsz)),
            'optimizer': build_optimizer(model, 'SGD', 0.01, 0.937, 5e-4, impl=opt.optimizer_impl),
            'scaler': torch.amp.GradScaler('cuda', enabled=amp)}


def timed_step(s, imgs, targets, device):
    """Seconds for one training step of setting ``s``: forward, loss, backward, optimizer step, EMA update."""
    import torch
    from utils.train.engine import optimizer_step
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    imgs = imgs.to(device).float() / 255
    if s['channels_last']:
        imgs = imgs.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, enabled=s['amp']):
        loss, _ = s['loss'](s['model'](imgs), targets.to(device))
    s['scaler'].scale(loss).backward()
    optimizer_step(s['model'], s['optimizer'], s['scaler'], s['ema'])
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def result_row(opt, s, times, nb, device, peaks):
    step = sorted(times)[len(times) // 2]  # median
    return {'freeze': s['freeze'], 'fast_path': s['fast_path'], 'frozen_flops_share': s['share'],
            'ideal_speedup': 3 / (3 - 2 * s['share']), 'sec_per_iter': step, 'sec_per_epoch': step * nb,
            'iters_per_epoch': nb, 'images_per_s': opt.batch_size / step, 'peak_rss_mb': peaks[0],
            'peak_cuda_mb': peaks[1], 'device': str(device), 'amp': s['amp'], 'channels_last': s['channels_last'],
            'optimizer_impl': s['optimizer_impl']}


def measure(opt):
    """One setting, in this process: returns a dict of timings and memory."""
    import torch
    from utils.runs import select_device

    device = select_device(opt.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    batches, nc, nb = load_batches(opt)
    s = build_setting(opt, opt.freeze, opt.fast_path, device, nc)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    times = [timed_step(s, imgs, targets, device) for imgs, targets in batches][opt.warmup:]
    peaks = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None)
    return result_row(opt, s, times, nb, device, peaks)


def measure_interleaved(opt):
    """Every setting in this one process, taking turns step by step (the order rotates each step), so load changes
    hit all alike: the robust way to compare settings on a busy machine. No per-setting memory figures."""
    import torch
    from utils.runs import select_device

    device = select_device(opt.device)
    torch.backends.cudnn.benchmark = True
    batches, nc, nb = load_batches(opt)
    settings = [build_setting(opt, f, v, device, nc) for f in opt.freeze for v in opt.fast_path]
    times = [[] for _ in settings]
    for k, (imgs, targets) in enumerate(batches):
        for j in range(len(settings)):
            i = (j + k) % len(settings)
            t = timed_step(settings[i], imgs, targets, device)
            if k >= opt.warmup:
                times[i].append(t)
    rows = [result_row(opt, s, t, nb, device, (None, None)) for s, t in zip(settings, times)]
    for r in rows:
        r['speedup'] = rows[0]['sec_per_iter'] / r['sec_per_iter']
        r['vs_plain'] = next(x for x in rows if x['freeze'] == r['freeze'])['sec_per_iter'] / r['sec_per_iter']
    return rows


def run_one(opt, f, variant):
    cmd = [sys.executable, __file__, '--worker', '--freeze', f, '--fast-path', variant, '--cfg', opt.cfg,
           '--data', opt.data, '--imgsz', str(opt.imgsz), '--batch-size', str(opt.batch_size),
           '--iters', str(opt.iters), '--warmup', str(opt.warmup), '--device', opt.device,
           '--optimizer-impl', opt.optimizer_impl, *(['--channels-last'] if opt.channels_last else [])]
    cmd += ['--batches', opt.batches] if opt.batches else []
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
        sys.exit(f'error: freeze {f} (fast path {variant}) failed: {last}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_all(opt):
    """Every setting in turn, ``rounds`` times over (interleaved, so load changes hit all alike); the fastest
    round of each setting is kept. ``speedup`` is against the first row (the first freeze and fast path),
    ``vs_plain`` against the first fast-path variant at the same freeze."""
    settings = [(f, v) for f in opt.freeze for v in opt.fast_path]
    best = {}
    for _ in range(opt.rounds):
        for f, v in settings:
            r = run_one(opt, f, v)
            if (f, v) not in best or r['sec_per_iter'] < best[f, v]['sec_per_iter']:
                best[f, v] = r
    rows = [best[s] for s in settings]
    for r in rows:
        r['speedup'] = rows[0]['sec_per_iter'] / r['sec_per_iter']
        r['vs_plain'] = best[r['freeze'], opt.fast_path[0]]['sec_per_iter'] / r['sec_per_iter']
    return rows


def print_table(rows, opt):
    how = 'all in one process, taking turns' if opt.interleave else f'best of {opt.rounds} rounds'
    print(f'{opt.cfg}, {opt.imgsz} px, batch {opt.batch_size}, {rows[0]["device"]}, AMP {rows[0]["amp"]}, '
          f'channels_last {opt.channels_last}, optimizer {opt.optimizer_impl}, median of {opt.iters} steps, {how}')
    print(f"{'freeze':>8}  {'fast path':<26}{'frozen FLOPs':>13}{'s/epoch':>9}{'img/s':>8}{'speedup':>9}"
          f"{'vs ' + opt.fast_path[0][:6]:>10}{'ideal':>8}{'peak RSS MB':>13}{'peak CUDA MB':>14}")
    for r in rows:
        rss, cuda = (f'{r[k]:.0f}' if r[k] is not None else '-' for k in ('peak_rss_mb', 'peak_cuda_mb'))
        print(f"{r['freeze']:>8}  {r['fast_path']:<26}{r['frozen_flops_share']:>12.1%}{r['sec_per_epoch']:>9.1f}"
              f"{r['images_per_s']:>8.1f}{r['speedup']:>8.2f}x{r['vs_plain']:>9.2f}x{r['ideal_speedup']:>7.2f}x"
              f"{rss:>13}{cuda:>14}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cfg', default='v6/yolov5s.yaml')
    p.add_argument('--data', default=str(ROOT / 'data/shapes.yaml'))
    p.add_argument('--imgsz', type=int, default=320)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--iters', type=int, default=8, help='timed steps per setting')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    p.add_argument('--rounds', type=int, default=2, help='repeat all settings; keep the fastest round of each')
    p.add_argument('--freeze', nargs='+', default=['0', '10', 'all'])
    p.add_argument('--fast-path', nargs='+', default=['all'],
                   help="frozen fast path variants: all, none, or ideas joined by '+' (fold, no_grad, channels_last)")
    p.add_argument('--device', default='cpu')
    p.add_argument('--channels-last', action='store_true', help='train the whole model and its input in NHWC')
    p.add_argument('--optimizer-impl', default='default', choices=['default', 'foreach', 'fused'],
                   help="torch's optimizer step: default (loop on CPU, foreach on CUDA), foreach or fused")
    p.add_argument('--json', default=str(ROOT / 'benchmarks/results/freeze.json'))
    p.add_argument('--interleave', action='store_true',
                   help='all settings in one process, step by step in turn (robust ratios on a loaded machine)')
    p.add_argument('--batches', default='', help='pre-made batches (a --save-batches file) instead of --data')
    p.add_argument('--save-batches', default='', help='write the batches to this file and exit')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    opt = p.parse_args()
    for v in opt.fast_path:
        try:
            fast_path_flags(v)
        except ValueError as e:
            p.error(str(e))
    if opt.save_batches:
        save_batches(opt, opt.save_batches)
        return
    if opt.worker:
        opt.freeze, opt.fast_path = opt.freeze[0], opt.fast_path[0]
        print(json.dumps(measure(opt)))
        return
    rows = measure_interleaved(opt) if opt.interleave else run_all(opt)
    print_table(rows, opt)
    out = Path(opt.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'config': {k: v for k, v in vars(opt).items() if k != 'worker'},
                               'machine': platform.platform(), 'results': rows}, indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
