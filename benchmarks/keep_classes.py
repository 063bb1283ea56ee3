"""Keeping the checkpoint's classes while learning new ones (``train.py --keep-classes``), against plain fine-tunes.

    python benchmarks/keep_classes.py --weights ../shared/weights/yolov5n.pt --epochs 10 --imgsz 416

Three fine-tunes of one checkpoint on the helmet data (``../shared/data/hardhat``: helmet and head labelled, the
workers not), same freeze, epochs, image size, batch and seed:

    keep          --keep-classes: the checkpoint's head stays (frozen) beside a trainable copy
    plain         a plain fine-tune with the new names only (helmet, head)
    names+new     a plain fine-tune with the checkpoint's names plus the new ones, labels only for the new ones

Measured:
- *checkpoint classes kept*: on ``--images`` the kept model's detections of checkpoint classes equal the
  checkpoint's own; on ``--voc`` (voc07mini test) the VOC devkit AP50 through the class map (and person's AP50)
  of every model next to the checkpoint's zero-shot value (plain: it cannot name a VOC class: 0);
- *new classes learned*: helmet and head AP50 on the helmet data's test list;
- *cost*: inference ms per image (CPU, 640 px, batch 1, fused as val.py loads it) of the kept model at
  ``--freeze`` and with all but Detect frozen, against the checkpoint: the models run interleaved and the ratio is
  the median of each round's ratio, with its quartiles; timed with glibc's allocator as it comes, then told to keep
  freed memory as detect.py and val.py run (the figure the targets judge); training seconds per epoch; file size.

Writes ``OUT.json`` and ``OUT.md`` (default benchmarks/results/keep_classes). Trained runs are reused when their
best.pt and timing file exist under ``--project`` (``--retrain``: train again).
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / 'shared'
SETTINGS = ('keep', 'plain', 'names+new')


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--weights', default=str(SHARED / 'weights' / 'yolov5n.pt'))
    p.add_argument('--data', default=str(SHARED / 'data' / 'hardhat' / 'hardhat.yaml'), help='the new classes')
    p.add_argument('--voc', default=str(SHARED / 'data' / 'voc07mini' / 'voc07mini.yaml'),
                   help="labelled checkpoint classes (its val split); '' to skip")
    p.add_argument('--images', default=str(SHARED / 'images'), help="images for the equal-predictions check")
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--imgsz', type=int, default=416, help='train and evaluation size')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--freeze', default='10')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--time-imgsz', type=int, default=640, help='inference timing size')
    p.add_argument('--time-reps', type=int, default=30, help='timed forwards per model (interleaved)')
    p.add_argument('--project', default=str(ROOT / 'runs' / 'keep_classes'))
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'keep_classes'))
    p.add_argument('--retrain', action='store_true')
    p.add_argument('--retime', action='store_true', help="only measure inference again (the models of OUT.json's "
                                                          'run under --project) and rewrite OUT.md/OUT.json')
    p.add_argument('--only', choices=SETTINGS, help='train this setting only (several such processes may run at '
                                                     'once; a later run without --only reuses them)')
    return p.parse_args(argv)


def names_plus_new_data(data, ckpt_names, folder):
    """The data relabelled for the 'names+new' row: the checkpoint's names then the data's, each label's class
    moved past the checkpoint's; the image lists point at the original images."""
    from utils.data.config import check_dataset
    d = check_dataset(data)
    folder = Path(folder)
    (folder / 'labels').mkdir(parents=True, exist_ok=True)
    (folder / 'images').mkdir(parents=True, exist_ok=True)
    shift = len(ckpt_names)
    lists = {}
    for split in ('train', 'val', 'test'):
        files = []
        for src in sorted(_image_files(d[split])):
            img = folder / 'images' / src.name
            if not img.exists():
                img.symlink_to(src)
            label = src.parent.parent / 'labels' / (src.stem + '.txt')
            rows = label.read_text().split('\n') if label.exists() else []
            out = [' '.join([str(int(r.split()[0]) + shift), *r.split()[1:]]) for r in rows if r.strip()]
            (folder / 'labels' / (src.stem + '.txt')).write_text('\n'.join(out) + ('\n' if out else ''))
            files.append(f'./images/{src.name}')
        (folder / f'{split}.txt').write_text('\n'.join(files) + '\n')
        lists[split] = f'{split}.txt'
    names = list(ckpt_names) + list(d['names'])
    text = (f"path: {folder}\ntrain: {lists['train']}\nval: {lists['val']}\ntest: {lists['test']}\n"
            f'nc: {len(names)}\nnames: {json.dumps(names)}\n')
    (folder / 'data.yaml').write_text(text)
    return folder / 'data.yaml'


def _image_files(split):
    items = split if isinstance(split, (list, tuple)) else [split]
    out = []
    for item in items:
        p = Path(item)
        if p.suffix == '.txt':
            out += [(p.parent / line.strip()).resolve() for line in p.read_text().splitlines() if line.strip()]
        else:
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in ('.jpg', '.jpeg', '.png'))
    return out


def train_setting(opt, name, data, flags):
    """One fine-tune (reused when done before); returns its best.pt and mean training seconds per epoch."""
    import train
    from utils.runs import PhaseTimer
    run_dir = Path(opt.project) / name
    timing = run_dir / 'timing.json'
    best = run_dir / 'weights' / 'best.pt'
    if best.exists() and timing.exists() and not opt.retrain:
        return {'best': best, **json.loads(timing.read_text())}
    args = ['--weights', opt.weights, '--data', str(data), '--epochs', str(opt.epochs), '--imgsz', str(opt.imgsz),
            '--batch-size', str(opt.batch_size), '--seed', str(opt.seed), '--workers', str(opt.workers),
            '--freeze', str(opt.freeze), '--device', 'cpu', '--project', str(opt.project), '--name', name,
            '--exist-ok', '--noplots', *flags]
    phases = PhaseTimer()
    train.main(train.parse_opt(args), phases=phases)
    per_epoch = list(phases.per_epoch.get('train', {}).values())
    t = {'train_s_per_epoch': statistics.median(per_epoch), 'wall_s': phases.wall()}
    timing.write_text(json.dumps(t))
    return {'best': best, **t}


def train_all(opt):
    """The three fine-tunes (or ``--only`` one): {setting: train_setting's dict}."""
    from utils.weights.checkpoint import read_weights
    plus = Path(opt.project) / 'data_names_plus_new'
    data = {'keep': opt.data, 'plain': opt.data,
            'names+new': lambda: names_plus_new_data(opt.data, read_weights(opt.weights)['names'], plus)}
    flags = {'keep': ['--keep-classes'], 'plain': [], 'names+new': []}
    return {s: train_setting(opt, s, data[s]() if callable(data[s]) else data[s], flags[s])
            for s in SETTINGS if opt.only in (None, s)}


def class_ap50(result, names, wanted):
    """{name: AP50} of the ``wanted`` classes with ground truth in a val.run result."""
    res = result.per_class
    out = {}
    for i, c in enumerate(res.classes):
        if names[c] in wanted:
            out[names[c]] = float(res.ap50[i])
    return out


def new_class_ap(weights, data, opt, tmp):
    import val
    from utils.data.config import check_dataset
    d = check_dataset(data)
    r = val.run(data=d, weights=str(weights), imgsz=opt.imgsz, task='test', batch_size=16, workers=opt.workers,
                device='cpu', plots=False, project=str(tmp), name='val', exist_ok=True)
    return class_ap50(r, d['names'], set(d['names']))


def checkpoint_class_ap(weights, opt, tmp):
    """VOC devkit AP50 (mean, and person's) of ``weights`` on --voc through the class map; None when it names none
    of the VOC classes."""
    import val
    from utils.data.config import check_dataset
    d = check_dataset(opt.voc)
    try:
        r = val.run(data=d, weights=str(weights), imgsz=opt.imgsz, batch_size=16, workers=opt.workers, device='cpu',
                    plots=False, project=str(tmp), name='voc', exist_ok=True)
    except ValueError as e:  # no data class matches a class of the model
        print(f'note: {e}')
        return None
    person = d['names'].index('person')
    return {'voc_ap50': float(r.voc_map), 'person_ap50': float(r.voc_ap[person])}


def same_predictions(ckpt, kept, images, imgsz, tmp):
    """detect.py on ``images`` with both: the kept model's detections of checkpoint classes vs the checkpoint's."""
    import detect
    runs = [detect.run(weights=str(w), source=str(images), imgsz=imgsz, device='cpu', nosave=True, verbose=False,
                       project=str(tmp), name='detect', exist_ok=True) for w in (ckpt, kept)]
    n_ckpt = None
    equal, n_dets, max_diff = True, 0, 0.0
    for a, b in zip(*runs):
        if n_ckpt is None:
            from utils.weights.checkpoint import read_weights
            n_ckpt = len(read_weights(ckpt)['names'])
        da, db = a['det'], b['det']
        db = db[db[:, 5] < n_ckpt]
        n_dets += len(da)
        if da.shape != db.shape:
            equal = False
            continue
        max_diff = max(max_diff, float((da - db).abs().max()) if len(da) else 0.0)
        equal &= bool(torch.equal(da, db))
    return {'images': len(runs[0]), 'detections': n_dets, 'equal': equal, 'max_abs_diff': max_diff}


def all_but_detect_model(opt):
    """The kept model with only Detect doubled (--freeze all), untrained: for timing."""
    from utils.data.config import check_dataset
    from utils.freeze.keep import keep_classes_model
    from utils.weights.checkpoint import read_weights
    names = check_dataset(opt.data)['names']
    return keep_classes_model(read_weights(opt.weights), names, None, 'all')[0]


def fused(model):
    with torch.no_grad():
        model.fuse()
    return model.requires_grad_(False).set_frozen_fast_path().eval()


def inference_ms(models, imgsz, reps):
    """Per model: the median ms per forward (batch 1, CPU) and, for every model after the first, the median and
    quartiles of its time over the first's *in the same round*. The models run interleaved, so a drift in the
    machine's speed hits each round's models alike and the paired ratio sees little of it."""
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    times = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(3):
                m(x)
        for _ in range(reps):
            for k, m in models.items():
                t = time.perf_counter()
                m(x)
                times[k].append((time.perf_counter() - t) * 1e3)
    base = times[next(iter(models))]
    res = {k: {'ms': statistics.median(v)} for k, v in times.items()}
    for k in list(models)[1:]:
        q1, q2, q3 = statistics.quantiles([a / b for a, b in zip(times[k], base)], n=4)
        res[k].update(ratio=q2, ratio_q1=q1, ratio_q3=q3)
    return res


def inference_timings(models, imgsz, reps):
    """``{'inference_ms': ..., 'inference_ms_default_allocator': ...}``: ``inference_ms`` with the C allocator as
    it comes, then with glibc told to keep freed memory as detect.py and val.py do (``keep_freed_memory``, glibc
    only): the primary figure. Without it the allocator's page faults depend on which model ran before: in one
    process the checkpoint ran faster after a kept model than after itself."""
    from utils.runs import keep_freed_memory
    default = inference_ms(models, imgsz, reps)
    if not keep_freed_memory():
        return {'inference_ms': default, 'inference_allocator': 'default'}
    return {'inference_ms': inference_ms(models, imgsz, reps), 'inference_allocator': 'steady',
            'inference_ms_default_allocator': default}


def ratio(entry, base):
    """A model's time over the checkpoint's: the paired median where measured, else the ratio of medians (a
    result saved before the paired ratio existed: ``entry`` and ``base`` are plain ms)."""
    if isinstance(entry, dict):
        return entry.get('ratio', 1.0)
    return entry / base


def timed_models(opt, kept_best):
    """The models whose inference is timed: the checkpoint, the kept model trained at ``--freeze`` (its best.pt)
    and one with all but Detect frozen, all loaded as val.py and detect.py load them."""
    from utils.weights.checkpoint import load_model
    return {'checkpoint': load_model(opt.weights, fuse=True),
            f'keep (freeze {opt.freeze})': load_model(kept_best, fuse=True),
            'keep (all but Detect frozen)': fused(all_but_detect_model(opt))}


def retime(opt):
    """``--retime``: OUT.json's result with inference measured again, nothing trained or evaluated."""
    saved_json = Path(opt.out).with_suffix('.json')
    if not saved_json.is_file():
        raise SystemExit(f'--retime: {saved_json} not found (run the benchmark once without --retime first)')
    res = json.loads(saved_json.read_text())
    saved = argparse.Namespace(**{**res['options'], 'time_imgsz': opt.time_imgsz, 'time_reps': opt.time_reps})
    best = Path(opt.project) / 'keep' / 'weights' / 'best.pt'
    res.update(inference_timings(timed_models(saved, best), opt.time_imgsz, opt.time_reps))
    res['options'] = vars(saved)
    return res


def measure(opt):
    tmp = Path(opt.project) / 'eval'
    runs = train_all(opt)
    rows = {}
    zero = checkpoint_class_ap(opt.weights, opt, tmp) if opt.voc else None
    for name, r in runs.items():
        rows[name] = {'new_ap50': new_class_ap(r['best'], opt.data, opt, tmp),
                      'checkpoint_ap': checkpoint_class_ap(r['best'], opt, tmp) if opt.voc else None,
                      'train_s_per_epoch': r['train_s_per_epoch'], 'file_mb': r['best'].stat().st_size / 2 ** 20}
    same = same_predictions(opt.weights, runs['keep']['best'], opt.images, 640, tmp) if opt.images else None
    timings = inference_timings(timed_models(opt, runs['keep']['best']), opt.time_imgsz, opt.time_reps)
    return {'options': {k: v for k, v in vars(opt).items()}, 'zero_shot': zero, 'rows': rows,
            'same_predictions': same, **timings,
            'checkpoint_file_mb': Path(opt.weights).stat().st_size / 2 ** 20,
            'machine': {'cpu': platform.processor() or platform.machine(), 'threads': torch.get_num_threads(),
                        'torch': torch.__version__}}


def _f(x, digits=3):
    return '-' if x is None else f'{x:.{digits}f}'


def table(res):
    """The Markdown table (and the targets' verdicts) of a ``measure`` result."""
    o, z, rows, ms = res['options'], res['zero_shot'] or {}, res['rows'], res['inference_ms']
    plain_new = rows['plain']['new_ap50']
    lines = [f"Checkpoint {Path(o['weights']).name}, data {Path(o['data']).name}, --freeze {o['freeze']}, "
             f"{o['epochs']} epochs at {o['imgsz']} px, batch {o['batch_size']}, seed {o['seed']}, CPU.", '',
             '| model | helmet AP50 | head AP50 | VOC AP50 (ckpt classes) | person AP50 | train s/epoch | file MB |',
             '|---|---|---|---|---|---|---|',
             f"| checkpoint (zero-shot) | - | - | {_f(z.get('voc_ap50'))} | {_f(z.get('person_ap50'))} | - | "
             f"{res['checkpoint_file_mb']:.1f} |"]
    for name, r in rows.items():
        c = r['checkpoint_ap'] or {'voc_ap50': 0.0, 'person_ap50': 0.0}  # plain: it cannot name a VOC class
        lines.append(f"| {name} | {_f(r['new_ap50'].get('helmet'))} | {_f(r['new_ap50'].get('head'))} | "
                     f"{_f(c['voc_ap50'])} | {_f(c['person_ap50'])} | {r['train_s_per_epoch']:.1f} | "
                     f"{r['file_mb']:.1f} |")
    lines += ['', *inference_table(res)]
    lines += ['', 'Targets:'] + [f'- {t}' for t in verdicts(res)]
    s = res['same_predictions']
    if s:
        lines.insert(-len(verdicts(res)) - 1, f"Checkpoint-class detections on {s['images']} images "
                     f"({s['detections']} boxes): {'equal' if s['equal'] else 'DIFFERENT'} "
                     f"(max abs difference {s['max_abs_diff']:.2g})\n")
    return '\n'.join(lines)


def inference_table(res):
    """The inference rows: each model's median ms and paired ratio with its quartiles, for the primary timing and,
    when measured, the one with the allocator as it comes."""
    ms, other = res['inference_ms'], res.get('inference_ms_default_allocator')
    head = '| inference (CPU, batch 1, %d px) | ms/image (median) | vs checkpoint (paired median) | quartiles |' % \
        res['options']['time_imgsz']
    if other:
        head += ' default allocator: ms | vs checkpoint | quartiles |'
    lines = [head, '|---' * (head.count('|') - 1) + '|']
    for k, v in ms.items():
        cells = _timing_cells(v, ms['checkpoint'])
        if other:
            cells += _timing_cells(other[k], other['checkpoint'])
        lines.append(f'| {k} | ' + ' | '.join(cells) + ' |')
    if other:
        lines.append('\nPrimary timing with glibc told to keep freed memory (as detect.py and val.py run: '
                     '`utils.runs.keep_freed_memory`); the default columns show the allocator as it comes.')
    return lines


def _timing_cells(v, base):
    spread = f"{v['ratio_q1']:.2f}-{v['ratio_q3']:.2f}" if isinstance(v, dict) and 'ratio_q1' in v else '-'
    return [f'{_ms(v):.1f}', f'{ratio(v, _ms(base)):.2f}x', spread]


def verdicts(res):
    z, rows, ms = res['zero_shot'], res['rows'], res['inference_ms']
    keep, plain = rows['keep'], rows['plain']
    out = []
    if z and keep['checkpoint_ap']:
        d = keep['checkpoint_ap']['voc_ap50'] - z['voc_ap50']
        out.append(f"checkpoint-class VOC AP50 change {d:+.4f} (target within +-0.002): {_ok(abs(d) <= 0.002)}")
    for c in ('helmet', 'head'):
        d = keep['new_ap50'].get(c, 0.0) - plain['new_ap50'].get(c, 0.0)
        out.append(f'{c} AP50 keep - plain {d:+.3f} (target >= -0.02): {_ok(d >= -0.02)}')
    keys = list(ms)
    for k, limit in zip(keys[1:], (1.4, 1.1)):
        r = ratio(ms[k], _ms(ms['checkpoint']))
        out.append(f'inference {k} {r:.2f}x the checkpoint (target <= {limit}x): {_ok(r <= limit)}')
    return out


def _ms(entry):
    return entry['ms'] if isinstance(entry, dict) else entry


def _ok(b):
    return 'met' if b else 'NOT met'


def main(argv=None):
    opt = parse_opt(argv)
    if opt.only:
        return train_all(opt)
    cmd = 'python benchmarks/keep_classes.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    res = retime(opt) if opt.retime else {**measure(opt), 'command': cmd}
    if opt.retime:
        res['retimed_by'] = cmd
    out = Path(opt.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = table(res)
    note = f"\n\nInference measured again, nothing else, by `{res['retimed_by']}`." if res.get('retimed_by') else ''
    out.with_suffix('.md').write_text(f"# --keep-classes benchmark\n\n`{res['command']}`{note}\n\n{text}\n")
    out.with_suffix('.json').write_text(json.dumps(res, indent=1, default=str))
    print(text)
    return res


if __name__ == '__main__':
    main()
