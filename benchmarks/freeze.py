"""What freezing saves: the same short training with several --freeze settings, side by side in one run.

    python benchmarks/freeze.py                                   # yolov5s, 320 px, batch 16, CPU, freeze 0/10/24
    python benchmarks/freeze.py --device 0 --imgsz 640 --iters 30   # on a GPU (AMP on)

Each setting runs in its own process (so peak RSS is its own) on the same pre-loaded mosaic batches from the
shapes dataset; a step is forward + loss + backward + optimizer step + EMA update, as in train.py. Prints a
table and writes JSON (default benchmarks/results/freeze.json).
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


def collect_batches(data, imgsz, batch_size, n, seed=0):
    from utils.datasets import check_dataset, create_dataloader, load_hyp
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


def measure(opt):
    """One setting, in this process: returns a dict of timings and memory."""
    import torch
    from models.yolo import Model
    from utils.ema import ModelEMA
    from utils.engine import optimizer_step
    from utils.freeze import FreezePlan, freeze_summary
    from utils.loss import ComputeLoss, scale_loss_gains
    from utils.datasets import load_hyp
    from utils.optim import build_optimizer
    from utils.runs import select_device

    device = select_device(opt.device)
    torch.manual_seed(0)
    batches, nc, nb = collect_batches(opt.data, opt.imgsz, opt.batch_size, opt.warmup + opt.iters)
    model = Model(opt.cfg, nc=nc).to(device)
    plan = FreezePlan.from_spec(opt.freeze, model).apply(model)
    share = freeze_summary(model, opt.imgsz)['frozen_flops_share']
    hyp = load_hyp(ROOT / 'data/hyps/hyp.scratch.yaml')
    compute_loss = ComputeLoss(model, scale_loss_gains(hyp, model.model[-1].nl, nc, opt.imgsz))
    optimizer = build_optimizer(model, 'SGD', 0.01, 0.937, 5e-4)
    ema = ModelEMA(model)
    ema.set_frozen(plan.ema_skip)
    amp = device.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    model.train()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for k, (imgs, targets) in enumerate(batches):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        imgs = imgs.to(device).float() / 255
        with torch.autocast(device_type=device.type, enabled=amp):
            loss, _ = compute_loss(model(imgs), targets.to(device))
        scaler.scale(loss).backward()
        optimizer_step(model, optimizer, scaler, ema)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if k >= opt.warmup:
            times.append(time.perf_counter() - t)
    step = sorted(times)[len(times) // 2]  # median
    return {'freeze': opt.freeze, 'frozen_flops_share': share, 'ideal_speedup': 3 / (3 - 2 * share),
            'sec_per_iter': step, 'sec_per_epoch': step * nb, 'iters_per_epoch': nb,
            'images_per_s': opt.batch_size / step,
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            'peak_cuda_mb': torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None,
            'device': str(device), 'amp': amp}


def run_one(opt, f):
    cmd = [sys.executable, __file__, '--worker', '--freeze', f, '--cfg', opt.cfg, '--data', opt.data,
           '--imgsz', str(opt.imgsz), '--batch-size', str(opt.batch_size), '--iters', str(opt.iters),
           '--warmup', str(opt.warmup), '--device', opt.device]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f'error: freeze {f} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_all(opt):
    """Every setting in turn, ``rounds`` times over (interleaved, so load changes hit all alike); the fastest
    round of each setting is kept."""
    best = {}
    for _ in range(opt.rounds):
        for f in opt.freeze:
            r = run_one(opt, f)
            if f not in best or r['sec_per_iter'] < best[f]['sec_per_iter']:
                best[f] = r
    rows = [best[f] for f in opt.freeze]
    base = rows[0]['sec_per_iter']
    for r in rows:
        r['speedup'] = base / r['sec_per_iter']
    return rows


def print_table(rows, opt):
    print(f'{opt.cfg}, {opt.imgsz} px, batch {opt.batch_size}, {rows[0]["device"]}, AMP {rows[0]["amp"]}, '
          f'median of {opt.iters} steps, best of {opt.rounds} rounds')
    print(f"{'freeze':>8}{'frozen FLOPs':>14}{'s/epoch':>10}{'img/s':>9}{'speedup':>9}{'ideal':>8}"
          f"{'peak RSS MB':>13}{'peak CUDA MB':>14}")
    for r in rows:
        cuda = f"{r['peak_cuda_mb']:.0f}" if r['peak_cuda_mb'] is not None else '-'
        print(f"{r['freeze']:>8}{r['frozen_flops_share']:>13.1%}{r['sec_per_epoch']:>10.1f}{r['images_per_s']:>9.1f}"
              f"{r['speedup']:>8.2f}x{r['ideal_speedup']:>7.2f}x{r['peak_rss_mb']:>13.0f}{cuda:>14}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cfg', default='v6/yolov5s.yaml')
    p.add_argument('--data', default=str(ROOT / 'data/shapes.yaml'))
    p.add_argument('--imgsz', type=int, default=320)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--iters', type=int, default=8, help='timed steps per setting')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    p.add_argument('--rounds', type=int, default=2, help='repeat all settings; keep the fastest round of each')
    p.add_argument('--freeze', nargs='+', default=['0', '10', '24'])
    p.add_argument('--device', default='cpu')
    p.add_argument('--json', default=str(ROOT / 'benchmarks/results/freeze.json'))
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    opt = p.parse_args()
    if opt.worker:
        opt.freeze = opt.freeze[0]
        print(json.dumps(measure(opt)))
        return
    rows = run_all(opt)
    print_table(rows, opt)
    out = Path(opt.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'config': {k: v for k, v in vars(opt).items() if k != 'worker'},
                               'machine': platform.platform(), 'results': rows}, indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
