"""The freeze study: fine-tune one checkpoint on one data set under several settings, side by side.

    python benchmarks/transfer.py --data datasets/coco64transfer/coco64transfer.yaml \\
        --weights ../shared/weights/yolov5n.pt --epochs 20 --imgsz 320
    python benchmarks/transfer.py --data data/voc.yaml --weights yolov5m.pt --epochs 70 --imgsz 640 --device 0
    python benchmarks/transfer.py ... --settings freeze0 freeze10 'f5:--freeze 5'     # another set

Each setting is one ``train.py`` run in its own process, with the same epochs, batch size, image size, hyp and
seed. Built-in settings (``--settings`` picks some, or adds ``name:train.py flags`` of your own):

    freeze0            --freeze 0
    freeze10           --freeze 10
    freeze10-bn-upstream   --freeze 10 --freeze-bn-stats false (upstream YOLOv5: frozen BN keeps updating)
    all-but-detect     --freeze all
    freeze10-unfreeze  --freeze 10 --unfreeze-epoch N/2
    mapping-off        --freeze 10 with class_map: none (every class row starts fresh)
    scratch-hyp        --freeze 0 --hyp data/hyps/hyp.scratch-low.yaml (upstream's default; not run
                       unless named in --settings)

Per setting: the zero-shot mAP (train.py's evaluation before the first step), final and best mAP, wall time,
seconds per training epoch, speedup against the first setting, peak RSS (and peak CUDA memory on a GPU). Writes a
Markdown table, JSON and a PNG of mAP50 per epoch (default benchmarks/results/transfer.{md,json,png}). Without
--data, the coco64 transfer set is built first (``python -m utils.freeze.transfer_set``).

Data with a VOC rule (``eval: voc07|voc12``, e.g. data/voc.yaml) fill results.csv's ``metrics/voc_mAP_0.5`` every
validated epoch, zero-shot row included; the study then reports the VOC devkit AP50 instead of mAP50: zero-shot,
final, best (with its epoch) and lowest over the epochs, the final's change against zero-shot, next to zero-shot,
final and best mAP50-95; the PNG draws devkit AP50 per epoch. Every setting validates each epoch (``--val-every 1``,
so that the lowest epoch is seen); with ``--val-every K`` the epochs train.py skipped (empty metric cells) are left
out of the curves.

A study too long for one sitting can go on where it stopped: the files are rewritten after each setting, and
``--resume`` keeps the rows of OUT.json whose setting and flags are the ones asked for (the study's options must
match, or it stops with one line naming them) and runs only the others. The table names the rows it reused: their
times were measured in the earlier run.
"""
import argparse
import csv
import json
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.train.config import val_every_flag  # noqa: E402
from utils.errors import InputError  # noqa: E402

SETTINGS = {
    'freeze0': '--freeze 0',
    'freeze10': '--freeze 10',
    'freeze10-bn-upstream': '--freeze 10 --freeze-bn-stats false',
    'all-but-detect': '--freeze all',
    'freeze10-unfreeze': '--freeze 10 --unfreeze-epoch {half}',
    'mapping-off': '--freeze 10 {mapping_off}',
    'scratch-hyp': '--freeze 0 --hyp data/hyps/hyp.scratch-low.yaml',
}
DEFAULT_SETTINGS = list(SETTINGS)[:6]
MAP50, MAP, VOC50 = 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'metrics/voc_mAP_0.5'
STUDY_OPTIONS = ('weights', 'data', 'epochs', 'imgsz', 'batch_size', 'hyp', 'seed', 'device', 'val_every')


def parse_settings(names, epochs, mapping_off_yaml):
    """[(name, [train.py flags])] from built-in names and ``name:flags`` entries."""
    out = []
    for s in names:
        name, _, flags = s.partition(':')
        if not flags:
            if name not in SETTINGS:
                raise InputError(f"--settings {name}: unknown (built in: {', '.join(SETTINGS)}; or 'name:flags')")
            flags = SETTINGS[name]
        flags = flags.format(half=max(epochs // 2, 1), mapping_off=f'--data {mapping_off_yaml}')
        out.append((name, shlex.split(flags)))
    return out


def mapping_off_data(data, out_dir):
    """A copy of the data YAML with ``class_map: none`` (absolute paths, so it works from anywhere)."""
    import yaml
    from utils.data.datasets import check_dataset
    d = check_dataset(data)
    cfg = {'path': str(d['path']), 'train': d['train'], 'val': d['val'], 'nc': d['nc'], 'names': d['names'],
           'class_map': 'none'}
    for key in ('format', 'eval'):
        if d.get(key):
            cfg[key] = d[key]
    if d.get('annotations'):
        cfg['annotations'] = {k: str(v) for k, v in d['annotations'].items()}
    path = Path(out_dir) / 'mapping_off.yaml'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def validated_rows(csv_path):
    """The rows of a results.csv with metrics (an epoch that --val-every skipped has empty metric cells)."""
    with open(csv_path) as f:
        return [r for r in csv.DictReader(f) if r.get(MAP50)]


def read_curve(csv_path):
    """[(epoch, mAP50, mAP50-95)] of the validated epochs of a results.csv, by column name."""
    return [(int(float(r['epoch'])), float(r[MAP50]), float(r[MAP])) for r in validated_rows(csv_path)]


def read_voc_curve(csv_path):
    """[(epoch, VOC devkit AP50)] of the validated epochs of a results.csv, or None when the run had no VOC rule
    (the column is empty or, in an older results.csv, absent)."""
    rows = validated_rows(csv_path)
    if not rows or not all(r.get(VOC50) for r in rows):
        return None
    return [(int(float(r['epoch'])), float(r[VOC50])) for r in rows]


def summarise(curve, voc_curve=None):
    """A setting's figures from its curves (epoch -1: the zero-shot row, never a candidate for best or lowest)."""
    start = [c for c in curve if c[0] < 0]
    trained = [c for c in curve if c[0] >= 0]
    best = max(trained, key=lambda c: c[1])
    out = dict(zero_shot_map50=start[0][1] if start else None, zero_shot_map=start[0][2] if start else None,
               final_map50=trained[-1][1], final_map=trained[-1][2], best_map50=best[1], best_epoch=best[0],
               curve=curve)
    if voc_curve:
        best_map = max(trained, key=lambda c: c[2])
        zero = [v for e, v in voc_curve if e < 0]
        voc = [(e, v) for e, v in voc_curve if e >= 0]
        vbest = max(voc, key=lambda c: c[1])
        out.update(best_map_epoch=best_map[0], best_map_value=best_map[2], voc_curve=voc_curve,
                   zero_shot_voc=zero[0] if zero else None, final_voc=voc[-1][1], best_voc=vbest[1],
                   best_voc_epoch=vbest[0], lowest_voc=min(v for _, v in voc),
                   voc_change=voc[-1][1] - zero[0] if zero else None)
    return out


def shared_args(opt):
    """The options every setting shares, as flags that both this script (its worker) and train.py take."""
    return ['--weights', opt.weights, '--data', opt.data, '--epochs', str(opt.epochs), '--imgsz', str(opt.imgsz),
            '--batch-size', str(opt.batch_size), '--seed', str(opt.seed), '--device', opt.device,
            '--workers', str(opt.workers), '--project', str(opt.project), '--val-every', str(opt.val_every),
            *(['--hyp', opt.hyp] if opt.hyp else [])]


def train_args(opt, name, flags):
    """train.py's command line for one setting: the study's shared options, then the setting's own flags."""
    return [*shared_args(opt), '--name', name, '--exist-ok', '--noplots', *flags]


def worker(opt, name, flags):
    """One setting in this process: train.py's run, timed; prints one JSON line."""
    import torch
    import train
    from utils.train import trainer

    epoch_times = []
    one_epoch = trainer.train_one_epoch

    def timed_epoch(*args, **kwargs):
        t = time.perf_counter()
        out = one_epoch(*args, **kwargs)
        epoch_times.append(time.perf_counter() - t)
        return out

    trainer.train_one_epoch = timed_epoch
    t0 = time.perf_counter()
    train.main(train.parse_opt(train_args(opt, name, flags)))
    wall = time.perf_counter() - t0
    cuda = torch.cuda.is_available() and opt.device not in ('cpu', '')
    return {'setting': name, 'flags': ' '.join(flags), 'wall_s': wall,
            's_per_epoch': sum(epoch_times) / max(len(epoch_times), 1),
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            'peak_cuda_mb': torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None}


def run_setting(opt, name, flags, script=__file__):
    """One setting in a fresh process of ``script``'s worker: its row (times, then the curves of its results.csv)."""
    cmd = [sys.executable, script, '--worker', name, '--worker-flags', ' '.join(shlex.quote(f) for f in flags),
           *shared_args(opt)]
    log = Path(opt.project) / f'{name}.log'
    log.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(Path(opt.project) / name, ignore_errors=True)  # a fresh run folder: results.csv from this run only
    print(f'{name}: train.py {" ".join(flags)} (log: {log})', flush=True)
    with log.open('w') as f:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f'error: setting {name} failed (exit {out.returncode}); see {log}')
    r = json.loads(out.stdout.strip().splitlines()[-1])
    results = Path(opt.project) / name / 'results.csv'
    r.update(summarise(read_curve(results), read_voc_curve(results)))
    return r


def reusable_rows(opt, settings):
    """{setting: row} of an earlier OUT.json for the asked settings whose flags are unchanged (``--resume``).

    Raises ValueError, naming the file, when the file is not a study's JSON or its study options differ from
    ``opt``'s: rows trained under other options would not belong in one table."""
    path = Path(opt.out).with_suffix('.json')
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
        config, results = saved['config'], saved['results']
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f'{path}: not a study JSON ({type(e).__name__}: {e}); --resume cannot use it') from None
    differ = [f'{k} {config.get(k)!r} there, {getattr(opt, k)!r} now' for k in STUDY_OPTIONS
              if str(config.get(k)) != str(getattr(opt, k))]
    if differ:
        raise InputError(f"{path}: another study's options ({'; '.join(differ)}); --resume needs the same ones")
    wanted = {name: ' '.join(flags) for name, flags in settings}
    return {r['setting']: r for r in results if wanted.get(r.get('setting')) == r.get('flags')}


def fmt(value, spec='.3f', epoch=None):
    """A table cell: '-' for a missing value; epochs shown 1-based (the zero-shot row is epoch 0)."""
    if value is None:
        return '-'
    return f'{value:{spec}}' + (f' ({epoch + 1})' if epoch is not None else '')


def markdown_table(rows, opt):
    """The study table. With every setting's devkit AP50 (VOC data), its columns replace mAP50's."""
    base = rows[0]['s_per_epoch']
    gpu = any(r['peak_cuda_mb'] is not None for r in rows)
    voc = all(r.get('voc_curve') for r in rows)
    if voc:
        head = ['setting', 'zero-shot AP50', 'zero-shot mAP50-95', 'final AP50', 'final mAP50-95',
                'best AP50 (epoch)', 'best mAP50-95 (epoch)', 'lowest AP50', 'final - zero-shot AP50']
    else:
        head = ['setting', 'zero-shot mAP50', 'zero-shot mAP50-95', 'final mAP50', 'final mAP50-95',
                'best mAP50 (epoch)']
    head += ['wall s', 's/epoch', 'speedup', 'peak RSS MB'] + (['peak CUDA MB'] if gpu else [])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for r in rows:
        if voc:
            cells = [fmt(r['zero_shot_voc']), fmt(r['zero_shot_map']), fmt(r['final_voc']), fmt(r['final_map']),
                     fmt(r['best_voc'], epoch=r['best_voc_epoch']), fmt(r['best_map_value'], epoch=r['best_map_epoch']),
                     fmt(r['lowest_voc']), fmt(r['voc_change'], '+.3f')]
        else:
            cells = [fmt(r['zero_shot_map50']), fmt(r['zero_shot_map']), fmt(r['final_map50']), fmt(r['final_map']),
                     fmt(r['best_map50'], epoch=r['best_epoch'])]
        cells += [f"{r['wall_s']:.0f}", f"{r['s_per_epoch']:.1f}", f"{base / r['s_per_epoch']:.2f}x",
                  f"{r['peak_rss_mb']:,.0f}"] + ([fmt(r['peak_cuda_mb'], ',.0f')] if gpu else [])
        lines.append(f"| {r['setting']} | " + ' | '.join(cells) + ' |')
    title = (f"{Path(opt.weights).name} on {Path(opt.data).name}: {opt.epochs} epochs, {opt.imgsz} px, batch "
             f"{opt.batch_size}, seed {opt.seed}, {'hyp ' + Path(opt.hyp).name if opt.hyp else 'default hyp'}, "
             f"device {opt.device or 'auto'}" + (f', {opt.jobs} settings at a time (times only indicative)'
                                                  if opt.jobs > 1 else ''))
    reused = [r['setting'] for r in rows if r.get('reused')]
    if reused:
        title += f"; reused by --resume from an earlier run, times measured then: {', '.join(reused)}"
    if voc:
        title += ('\n\nAP50: the VOC devkit AP50 (metrics/voc_mAP_0.5 of results.csv: difficult objects ignored; '
                  '11-point for eval: voc07, all-point for voc12); mAP50-95: the COCO 101-point rule, difficult '
                  'objects ignored too. Epochs '
                  'are 1-based; zero-shot is the evaluation before the first step.')
    return title + '\n\n' + '\n'.join(lines) + '\n'


def plot_curves(rows, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 5), tight_layout=True)
    ax = fig.subplots()
    voc = all(r.get('voc_curve') for r in rows)
    metric = 'VOC devkit AP50' if voc else 'mAP50'
    for r in rows:
        points = r['voc_curve'] if voc else [c[:2] for c in r['curve']]
        ep = [c[0] + 1 for c in points]  # the zero-shot row (epoch -1) is drawn at 0: before any step
        ax.plot(ep, [c[1] for c in points], marker='.', label=r['setting'])
    ax.set(xlabel='epoch (0 = zero-shot, before the first step)', ylabel=metric, title=f'{metric} per epoch')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    return path


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default=None, help='data YAML (default: the coco64 transfer set, built on first use)')
    p.add_argument('--weights', default=str(ROOT.parent / 'shared/weights/yolov5n.pt'), help='pretrained .pt')
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--imgsz', type=int, default=320)
    p.add_argument('--batch-size', type=int, default=16)
    add_run_options(p, val_every='1', val_help="train.py's --val-every for every setting (default 1: each epoch, for "
                                               "the lowest-AP50 column)")
    p.add_argument('--jobs', type=int, default=1,
                   help='settings run at once (default 1: one after another, for comparable times)')
    p.add_argument('--settings', nargs='+', default=DEFAULT_SETTINGS,
                   help="built-in names and/or 'name:train.py flags'; the first is the speed reference")
    add_output_options(p, 'runs/transfer-study', 'benchmarks/results/transfer', 'OUT.md/.json/.png')
    return p.parse_args(argv)


def add_run_options(p, val_every, val_help):
    """The options of each setting's train.py run that a study passes on: hyp, seed, device, workers, val-every."""
    p.add_argument('--hyp', default=None, help="hyp YAML (default: train.py's for a pretrained start)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='', help="'' (GPU if any), cpu, 0")
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--val-every', type=val_every_flag, default=val_every, help=val_help)


def add_output_options(p, project, out, files):
    """Where a study's runs and files go, --resume, and the hidden options of its worker processes."""
    p.add_argument('--project', default=str(ROOT / project), help='where the runs go')
    p.add_argument('--out', default=str(ROOT / out), help=f'writes {files}')
    p.add_argument('--resume', action='store_true',
                   help="keep OUT.json's rows of the asked settings (same options and flags); run only the others")
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    p.add_argument('--worker-flags', default='', help=argparse.SUPPRESS)


def run_worker(opt, work):
    """In a setting's worker process: ``work(opt, name, flags)``'s row as the one JSON line of stdout (train.py's
    log goes to stderr, the setting's log file)."""
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):
        result = work(opt, opt.worker, shlex.split(opt.worker_flags))
    print(json.dumps(result))


def main(argv=None):
    opt = parse_opt(argv)
    if opt.worker:
        return run_worker(opt, worker)
    if opt.data is None:
        from utils.freeze.transfer_set import make_transfer_set
        opt.data = str(make_transfer_set())
    try:
        settings = parse_settings(opt.settings, opt.epochs, mapping_off_data(opt.data, opt.project))
        reused = reusable_rows(opt, settings) if opt.resume else {}
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f'error: {e}')
    if reused:
        print(f"--resume: {', '.join(reused)} from {Path(opt.out).with_suffix('.json')}", flush=True)
    todo = [s for s in settings if s[0] not in reused]
    done = {name: {**row, 'reused': True} for name, row in reused.items()}
    if opt.jobs > 1:  # several settings at once: results as sequential, timings only indicative
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(opt.jobs) as pool:
            done.update(zip([name for name, _ in todo], pool.map(lambda s: run_setting(opt, *s), todo)))
    else:  # the files are rewritten after each setting, so a long study stopped early keeps what it measured
        for i, (name, flags) in enumerate(todo):
            done[name] = run_setting(opt, name, flags)
            if i < len(todo) - 1:
                write_outputs([done[n] for n, _ in settings if n in done], opt, quiet=True)
    write_outputs([done[name] for name, _ in settings], opt)


def write_outputs(rows, opt, quiet=False, make_table=markdown_table, plot=True):
    """The study's table (``make_table(rows, opt)``, printed unless ``quiet``), JSON and per-epoch PNG (``plot``)
    at ``opt.out``."""
    table = make_table(rows, opt)
    out = Path(opt.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.md').write_text(table)
    config = {k: v for k, v in vars(opt).items() if not k.startswith('worker')}
    out.with_suffix('.json').write_text(json.dumps({'config': config, 'machine': platform.platform(),
                                                    'results': rows}, indent=2))
    if plot:
        plot_curves(rows, out.with_suffix('.png'))
    if not quiet:
        print(table)
        print(f"wrote {out}.md, {out}.json{f', {out}.png' if plot else ''}")


if __name__ == '__main__':
    main()
