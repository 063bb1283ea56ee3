"""Upstream YOLOv5 v7.0's training step on pre-made batches; benchmarks/upstream.py runs it inside .venv-upstream.

It imports upstream's own code only (never this project's): ``yolov5.models.yolo.Model`` from the YAML,
``ComputeLoss``, ``smart_optimizer`` (SGD), ``ModelEMA``, and upstream's freezing (``requires_grad`` off, BatchNorm
left training). One step = forward + loss + backward + unscale, clip, optimizer step + EMA update, as upstream's
train.py does it. Prints one JSON line with the same fields as benchmarks/freeze.py's workers.
"""
import argparse
import json
import resource
import time

import torch
import yaml


def build(opt, nc, device):
    """Upstream's model, loss, optimizer and EMA, frozen the way upstream's train.py freezes."""
    from yolov5.models.yolo import Model
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.torch_utils import ModelEMA, smart_optimizer

    with open(opt.cfg) as f:
        model = Model(yaml.safe_load(f), ch=3, nc=nc).to(device)
    with open(opt.hyp) as f:
        hyp = yaml.safe_load(f)
    nl = model.model[-1].nl  # upstream's train.py scales the loss gains to layers, classes and image size
    hyp['box'] *= 3 / nl
    hyp['cls'] *= nc / 80 * 3 / nl
    hyp['obj'] *= (opt.imgsz / 640) ** 2 * 3 / nl
    model.nc, model.hyp = nc, hyp
    n = len(model.model) - 1 if opt.freeze == 'all' else int(opt.freeze)
    frozen = [f'model.{x}.' for x in range(n)]
    for k, v in model.named_parameters():
        v.requires_grad = not any(x in k for x in frozen)
    optimizer = smart_optimizer(model, 'SGD', hyp['lr0'], hyp['momentum'], hyp['weight_decay'])
    return model, ComputeLoss(model), optimizer, ModelEMA(model)


def measure(opt):
    device = torch.device('cpu' if opt.device == 'cpu' else f'cuda:{opt.device}')
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    data = torch.load(opt.batches)
    batches = data['batches'][:opt.warmup + opt.iters]
    model, compute_loss, optimizer, ema = build(opt, data['nc'], device)
    amp = device.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    model.train()
    if amp:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for k, (imgs, targets) in enumerate(batches):
        if amp:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        imgs = imgs.to(device).float() / 255
        with torch.autocast(device_type=device.type, enabled=amp):
            loss, _ = compute_loss(model(imgs), targets.to(device))
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        ema.update(model)
        if amp:
            torch.cuda.synchronize(device)
        if k >= opt.warmup:
            times.append(time.perf_counter() - t)
    step = sorted(times)[len(times) // 2]  # median
    return {'freeze': opt.freeze, 'sec_per_iter': step, 'sec_per_epoch': step * data['nb'],
            'images_per_s': imgs.shape[0] / step,
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            'peak_cuda_mb': torch.cuda.max_memory_allocated(device) / 2 ** 20 if amp else None,
            'device': str(device), 'amp': amp}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cfg', required=True, help='model YAML in upstream form (benchmarks/upstream.py writes it)')
    p.add_argument('--hyp', required=True)
    p.add_argument('--batches', required=True, help='file written by benchmarks/freeze.py --save-batches')
    p.add_argument('--imgsz', type=int, required=True)
    p.add_argument('--freeze', default='0', help="a layer count or 'all'")
    p.add_argument('--iters', type=int, default=8)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--device', default='cpu')
    print(json.dumps(measure(p.parse_args())))


if __name__ == '__main__':
    main()
