"""What the frozen-prefix memo (models/prefix_memo.py) saves in the per-epoch validation of a frozen fine-tune.

    python benchmarks/val_memo.py                         # yolov5n.pt on coco64dev at 320 px, freeze 10 and all
    python benchmarks/val_memo.py --imgsz 640 --freeze 10

The trainer's validation, measured alone: the EMA of a model frozen with ``--freeze`` (fast path on, as in
train.py) evaluates the val split with ``utils.eval.evaluator.evaluate`` (conf 0.001, NMS, metrics, the val loss), with
and without a memo, taking turns ``--rounds`` times after one pass that fills the memo (the zero-shot val does that
in a run). Reports the median seconds per validation, the ratio, the memo's size and whether the numbers agree.
Prints a table and writes JSON (default benchmarks/results/val_memo.json).
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def val_setup(opt):
    """(val loader, evaluation config, loss function's factory) as train.py builds them for this data."""
    from utils.data.config import check_dataset, load_hyp
    from utils.data.datasets import create_dataloader
    from utils.eval.evaluator import EvalConfig
    data = check_dataset(opt.data)
    hyp = load_hyp(ROOT / 'data/hyps/hyp.transfer.yaml')
    loader, _ = create_dataloader(data['val'], opt.imgsz, opt.batch_size, 32, hyp=hyp, augment=False, rect=True,
                                  workers=opt.workers, pad=0.5, data=data, prefix='val: ', keep_workers=True)
    return loader, EvalConfig.for_data(data), hyp, data['nc']


def frozen_ema(opt, spec, nc):
    """The EMA model of a ``--freeze spec`` fine-tune of ``opt.weights``, and the memo train.py would give it."""
    from models.prefix_memo import PrefixMemo
    from utils.weights.checkpoint import load_model
    from utils.train.engine import ModelEMA
    from utils.freeze.plan import FreezePlan
    model = load_model(opt.weights).train()
    assert model.model[-1].nc == nc, f'{opt.weights}: {model.model[-1].nc} classes, the data has {nc}'
    plan = FreezePlan.from_spec(spec, model).apply(model)
    model.set_frozen_fast_path()
    ema = ModelEMA(model)
    ema.set_frozen(plan.ema_skip)
    return model, ema.ema, PrefixMemo.for_frozen(model, 'cpu')


def measure(opt, spec, loader, config, hyp, nc):
    from utils.eval.evaluator import evaluate
    from utils.train.loss import ComputeLoss, scale_loss_gains
    model, ema, memo = frozen_ema(opt, spec, nc)
    loss = ComputeLoss(model, scale_loss_gains(hyp, model.model[-1].nl, nc, opt.imgsz))
    times, results = {'plain': [], 'memo': []}, {}
    ema.prefix_memo = memo
    evaluate(ema, loader, config, compute_loss=loss)  # fills the memo (train.py: the zero-shot val)
    for _ in range(opt.rounds):
        for how in ('plain', 'memo'):
            ema.prefix_memo = memo if how == 'memo' else None
            t = time.perf_counter()
            results[how] = evaluate(ema, loader, config, compute_loss=loss)
            times[how].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    same = all(getattr(results['plain'], k) == getattr(results['memo'], k) for k in ('map50', 'map', 'p', 'r'))
    return {'freeze': spec, 'cut': memo.cut, 'plain_s': med['plain'], 'memo_s': med['memo'],
            'speedup': med['plain'] / med['memo'], 'memo_mb': memo.used / 2 ** 20, 'hits': memo.hits,
            'same_numbers': same, 'map50': results['memo'].map50}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', default=str(ROOT.parent / 'shared/weights/yolov5n.pt'))
    p.add_argument('--data', default=str(ROOT.parent / 'shared/data/coco64dev/coco64dev.yaml'))
    p.add_argument('--imgsz', type=int, default=320)
    p.add_argument('--batch-size', type=int, default=32, help="the val loader's batch (train.py: 2 x --batch-size)")
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--freeze', nargs='+', default=['10', 'all'])
    p.add_argument('--json', default=str(ROOT / 'benchmarks/results/val_memo.json'))
    opt = p.parse_args()
    import torch
    torch.manual_seed(0)
    loader, config, hyp, nc = val_setup(opt)
    rows = [measure(opt, f, loader, config, hyp, nc) for f in opt.freeze]
    print(f'{Path(opt.weights).name} on {Path(opt.data).stem}, {opt.imgsz} px, val batch {opt.batch_size}, '
          f'{len(loader.dataset)} images, median of {opt.rounds} validations each, CPU')
    print(f"{'freeze':>7}{'memo layers':>13}{'plain s':>9}{'memo s':>8}{'speedup':>9}{'memo MB':>9}{'same numbers':>14}")
    for r in rows:
        print(f"{r['freeze']:>7}{r['cut']:>13}{r['plain_s']:>9.2f}{r['memo_s']:>8.2f}{r['speedup']:>8.2f}x"
              f"{r['memo_mb']:>9.0f}{str(r['same_numbers']):>14}")
    out = Path(opt.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({'config': vars(opt), 'machine': platform.platform(), 'results': rows}, indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
