"""Side by side with upstream YOLOv5 v7.0 (PyPI ``yolov5`` 7.0.x), which runs in its own virtual environment.

    python benchmarks/upstream.py                  # both tables: training step, and whole processes
    python benchmarks/upstream.py --only step      # benchmarks/freeze.py's step, ours vs upstream, freeze 0/10/all
    python benchmarks/upstream.py --only runs      # 2-epoch training and 20-epoch fine-tune (freeze 0/10), val.py,
                                                   # detect.py
    python benchmarks/upstream.py --tiny           # smoke test: tiny images, few steps, one round

The first run creates ``.venv-upstream/`` (git-ignored) with ``python -m venv`` and pip-installs ``yolov5==7.0.*``
beside torch/torchvision at this environment's versions, plus ``numpy<2``, ``pillow<10`` and ``setuptools<81``
(v7.0 calls ``np.trapz``, ``FreeTypeFont.getsize`` and ``pkg_resources``). Upstream is never a dependency of this
project or its tests, and runs offline: its config folder is ``.venv-upstream/config`` with ``Arial.ttf``
pre-placed (DejaVuSans from the venv's matplotlib; v7.0 would download it), weights come from ``../shared``,
data YAMLs are rewritten with absolute paths, and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` lets v7.0 unpickle its
checkpoints. Each pair runs interleaved (ours, upstream, ours, upstream...), the best of ``--rounds`` is kept,
and ratios are ours/upstream wall time (below 1: we are faster). Prints the tables and writes JSON.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.runs import is_writable_dir  # noqa: E402

PINS = ['yolov5==7.0.*', 'numpy<2', 'pillow<10', 'setuptools<81']
ACTIVATIONS = {'silu': 'nn.SiLU()', 'leakyrelu': 'nn.LeakyReLU(0.1)', 'hardswish': 'nn.Hardswish()',
               'relu': 'nn.ReLU()'}
TINY = {'step_imgsz': 128, 'step_batch': 4, 'iters': 2, 'warmup': 1, 'train_images': 16, 'train_imgsz': 128,
        'train_batch': 8, 'epochs': 1, 'val_imgsz': 160, 'rounds': 1, 'finetune_imgsz': 128, 'finetune_epochs': 1}


def ensure_venv(venv):
    """The upstream environment's python, creating the environment the first time."""
    py = venv / 'bin' / 'python'
    if (venv / '.ready').exists():
        return py
    import torch
    import torchvision
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            *PINS]
    print(f'creating {venv} (once): pip install {" ".join(pins)}', flush=True)
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    for _ in range(2):  # pip's resolver has been seen to fail once on a fresh environment and pass when re-run
        if subprocess.run([str(py), '-m', 'pip', 'install', '-q', *pins]).returncode == 0:
            break
    else:
        sys.exit(f'error: could not install upstream YOLOv5 into {venv} (see pip output above)')
    fonts = sorted(venv.glob('lib/python*/site-packages/matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf'))
    if not fonts:
        sys.exit(f'error: {venv}: no DejaVuSans.ttf in its matplotlib to stand in for Arial.ttf')
    (venv / 'config').mkdir(exist_ok=True)
    shutil.copy(fonts[0], venv / 'config' / 'Arial.ttf')
    (venv / '.ready').write_text(json.dumps(pins))
    return py


def upstream_env(venv):
    """Environment for upstream's processes: settings and font in the venv, no downloads, whole-model unpickling."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    config = str((venv / 'config').resolve())
    env.update(YOLOV5_CONFIG_DIR=config, YOLO_CONFIG_DIR=config, YOLO_OFFLINE='1', MPLBACKEND='Agg',
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    return env


def upstream_model_yaml(cfg, out):
    """Our model YAML in upstream's form: its keys only, the activation as upstream's code string."""
    from models.yolo import load_yaml_cfg
    d = load_yaml_cfg(cfg)
    keep = {k: d[k] for k in ('nc', 'depth_multiple', 'width_multiple', 'anchors', 'backbone', 'head')}
    act = str(d.get('activation', 'SiLU')).replace('nn.', '').split('(')[0].lower()
    keep['activation'] = ACTIVATIONS.get(act, 'nn.SiLU()')
    out.write_text(yaml.safe_dump(keep, sort_keys=False))
    return out


def upstream_voc_copy(data, out_dir):
    """A VOC-XML data set (``format: voc``, e.g. voc07mini) in the layout upstream reads, built once in ``out_dir``:
    ``images/<split>/<id>.jpg`` (links to the originals) and ``labels/<split>/<id>.txt`` with YOLO rows. Difficult
    objects are left out, as upstream's VOC.yaml converts them. Returns the upstream data YAML's dict."""
    from utils.data.config import check_dataset
    from utils.data.label_scan import scan_voc
    try:
        d = check_dataset(data)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f'error: --finetune-data: {e}')  # e names the file
    out_dir = Path(out_dir).resolve()
    if not (out_dir / '.converted').exists():
        for split in ('train', 'val'):
            for src in d[split]:
                records, report = scan_voc(src, d['names'])
                print(f'upstream copy of {src}: {report.summary()}')  # skipped images are counted, not copied
                write_yolo_split(records, out_dir / 'images' / split, out_dir / 'labels' / split)
        (out_dir / '.converted').touch()
    return {'path': str(out_dir), 'train': 'images/train', 'val': 'images/val', 'nc': d['nc'], 'names': d['names']}


def write_yolo_split(records, images, labels):
    """Links to each record's image in ``images`` and its YOLO rows (class cx cy w h, normalised) in ``labels``;
    difficult objects left out."""
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for rec in records:
        src = Path(rec.im_file).resolve()
        link = images / src.name
        if not link.is_symlink():
            link.symlink_to(src)
        rows = [f'{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n'
                for c, (x, y, w, h), hard in zip(rec.cls, rec.boxes, rec.difficult) if not hard]
        (labels / f'{src.stem}.txt').write_text(''.join(rows))


def upstream_data_yaml(data, out):
    """A data YAML whose ``path`` is absolute (upstream resolves relative paths against its own package).
    A VOC-XML data set is first converted to YOLO text labels (``upstream_voc_copy``).

    Upstream writes ``labels/*.cache`` beside the labels of any folder ``os.access`` calls writable, which a
    read-only share is to root: a data set in a folder without write permission bits is copied beside ``out``
    first, so upstream never writes into it (and pays the same one-time label scan as ours)."""
    path = Path(data).resolve()
    d = yaml.safe_load(path.read_text())
    if d.get('format') == 'voc':
        out.write_text(yaml.safe_dump(upstream_voc_copy(path, out.parent / f'{path.stem}-yolo'), sort_keys=False))
        return out
    root = (path.parent / d.get('path', '.')).resolve()
    if not is_writable_dir(root / 'labels' if (root / 'labels').is_dir() else root):
        copy = out.parent / f'{root.name}-copy'
        if not copy.is_dir():
            shutil.copytree(root, copy, ignore=shutil.ignore_patterns('*.cache'))
        root = copy
    d['path'] = str(root)
    for k in ('generate', 'format', 'annotations', 'eval'):
        d.pop(k, None)
    out.write_text(yaml.safe_dump(d, sort_keys=False))
    return out


def synthetic_data(work, n_train):
    """The shapes set with ``n_train`` training images, once for us and once for upstream (each writes its own
    label cache, under the same name)."""
    from utils.data.shapes import ensure_shapes
    yamls = {}
    for who in ('ours', 'upstream'):
        root = ensure_shapes(work / f'shapes{n_train}-{who}', splits={'train': n_train, 'val': max(n_train // 4, 8)})
        y = work / f'shapes{n_train}-{who}.yaml'
        y.write_text(yaml.safe_dump({'path': str(root), 'train': 'images/train', 'val': 'images/val', 'nc': 4,
                                     'names': ['circle', 'square', 'triangle', 'star']}, sort_keys=False))
        yamls[who] = y
    return yamls


def timed(cmd, env, cwd, log):
    """Run ``cmd``; (wall seconds, peak RSS MB of its largest process). Output goes to ``log``; exits on failure."""
    with open(log, 'w') as f:
        t = time.perf_counter()
        p = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        tail = Path(log).read_text(errors='replace').strip().splitlines()[-3:]
        sys.exit(f'error: {" ".join(map(str, cmd[:4]))}... failed ({log}):\n' + '\n'.join(tail))
    return wall, usage.ru_maxrss / 1024


def json_line(cmd, env, cwd):
    """The last stdout line of ``cmd``, parsed as JSON; exits on failure."""
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd)
    if out.returncode:
        tail = '\n'.join(out.stderr.strip().splitlines()[-3:])
        sys.exit(f'error: {" ".join(map(str, cmd[:3]))}... failed:\n{tail}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_rows(opt, py, env, work):
    """benchmarks/freeze.py's training step (ours, fast path on) and upstream's, on the same saved batches."""
    batches = work / 'batches.pt'
    common = ['--iters', opt.iters, '--warmup', opt.warmup, '--device', opt.device]
    save = [sys.executable, ROOT / 'benchmarks/freeze.py', '--save-batches', batches, '--cfg', opt.step_cfg,
            '--imgsz', opt.step_imgsz, '--batch-size', opt.step_batch, *common]
    subprocess.run([str(c) for c in save], check=True, cwd=ROOT)
    up_cfg = upstream_model_yaml(opt.step_cfg, work / 'upstream-step-model.yaml')
    best = {}
    for _ in range(opt.rounds):
        for f in opt.freeze:
            ours = json_line([sys.executable, ROOT / 'benchmarks/freeze.py', '--worker', '--batches', batches,
                              '--freeze', f, '--cfg', opt.step_cfg, '--imgsz', opt.step_imgsz,
                              '--batch-size', opt.step_batch, *common], None, ROOT)
            up = json_line([py, ROOT / 'benchmarks/upstream_step.py', '--batches', batches, '--cfg', up_cfg,
                            '--hyp', ROOT / 'data/hyps/hyp.scratch.yaml', '--imgsz', opt.step_imgsz, '--freeze', f,
                            *common], env, work)
            for who, r in (('ours', ours), ('upstream', up)):
                if (f, who) not in best or r['sec_per_iter'] < best[f, who]['sec_per_iter']:
                    best[f, who] = r
    return [{'freeze': f, 'ours': best[f, 'ours'], 'upstream': best[f, 'upstream'],
             'ratio': best[f, 'ours']['sec_per_iter'] / best[f, 'upstream']['sec_per_iter']} for f in opt.freeze]


def run_jobs(opt, py, env, work):
    """(name, our command, upstream's command) for each whole-process comparison."""
    runs = work / 'runs'
    jobs = []
    if opt.epochs:
        data = synthetic_data(work, opt.train_images)
        up_cfg = upstream_model_yaml(opt.train_cfg, work / 'upstream-train-model.yaml')
        for f in ('0', '10'):
            args = ['--weights', '', '--epochs', opt.epochs, '--batch-size', opt.train_batch, '--freeze', f,
                    '--workers', opt.workers, '--device', opt.device, '--project', runs, '--exist-ok']
            jobs.append((f'train {opt.train_cfg} {opt.train_imgsz}px b{opt.train_batch} {opt.train_images} img '
                         f'{opt.epochs} ep, freeze {f}',
                         [sys.executable, ROOT / 'train.py', '--cfg', opt.train_cfg, '--data', data['ours'],
                          '--imgsz', opt.train_imgsz, *args, '--name', f'ours-train-f{f}'],
                         [py, '-m', 'yolov5.train', '--cfg', up_cfg, '--data', data['upstream'],
                          '--img', opt.train_imgsz, *args, '--name', f'upstream-train-f{f}']))
    weights, images = Path(opt.weights).resolve(), Path(opt.images).resolve()
    jobs += finetune_jobs(opt, py, work, weights)
    common = ['--weights', weights, '--device', opt.device, '--project', runs, '--exist-ok']
    if Path(opt.val_data).is_file() and weights.is_file():
        up_data = upstream_data_yaml(opt.val_data, work / 'upstream-val-data.yaml')
        jobs.append((f'val.py {weights.stem} {Path(opt.val_data).stem} {opt.val_imgsz}px',
                     [sys.executable, ROOT / 'val.py', '--data', Path(opt.val_data).resolve(), '--imgsz',
                      opt.val_imgsz, *common, '--name', 'ours-val'],
                     [py, '-m', 'yolov5.val', '--data', up_data, '--img', opt.val_imgsz, *common,
                      '--name', 'upstream-val']))
    if images.exists() and weights.is_file():
        jobs.append((f'detect.py {weights.stem} {images.name}',
                     [sys.executable, ROOT / 'detect.py', '--source', images, *common, '--name', 'ours-detect'],
                     [py, '-m', 'yolov5.detect', '--source', images, *common, '--name', 'upstream-detect']))
    return jobs


def finetune_jobs(opt, py, work, weights):
    """The issue's fine-tune: ``--weights`` (yolov5n) on the real images of ``--finetune-data``, freeze 0 and 10,
    the same command for both (ours then starts from hyp.transfer.yaml, upstream from hyp.scratch-low.yaml)."""
    if not opt.finetune_epochs or not Path(opt.finetune_data).is_file() or not weights.is_file():
        return []
    up_data = upstream_data_yaml(opt.finetune_data, work / 'upstream-finetune-data.yaml')
    jobs = []
    for f in ('0', '10'):
        args = ['--weights', weights, '--epochs', opt.finetune_epochs, '--batch-size', opt.train_batch, '--freeze', f,
                '--workers', opt.workers, '--device', opt.device, '--project', work / 'runs', '--exist-ok']
        jobs.append((f'fine-tune {weights.stem} {Path(opt.finetune_data).stem} {opt.finetune_imgsz}px '
                     f'b{opt.train_batch} {opt.finetune_epochs} ep, freeze {f}',
                     [sys.executable, ROOT / 'train.py', '--data', Path(opt.finetune_data).resolve(), '--imgsz',
                      opt.finetune_imgsz, *args, '--name', f'ours-finetune-f{f}'],
                     [py, '-m', 'yolov5.train', '--data', up_data, '--img', opt.finetune_imgsz, *args,
                      '--name', f'upstream-finetune-f{f}']))
    return jobs


def time_line(log):
    """Our train.py's closing 'Time: ...' breakdown from its log, or None."""
    lines = [ln for ln in Path(log).read_text(errors='replace').splitlines() if ln.startswith('Time: ')]
    return lines[-1] if lines else None


def process_rows(opt, py, env, work):
    """Whole processes, ours then upstream's, interleaved over ``rounds``; the fastest round of each is kept."""
    jobs = run_jobs(opt, py, env, work)
    best = {}
    for _ in range(opt.rounds):
        for i, (name, ours, up) in enumerate(jobs):
            for who, cmd, e, cwd in (('ours', ours, None, ROOT), ('upstream', up, env, work)):
                log = work / f'log-{i}-{who}.txt'
                wall, rss = timed(cmd, e, cwd, log)
                if (i, who) not in best or wall < best[i, who][0]:
                    best[i, who] = (wall, rss, time_line(log) if who == 'ours' else None)
    return [{'what': name, 'ours_s': best[i, 'ours'][0], 'upstream_s': best[i, 'upstream'][0],
             'ratio': best[i, 'ours'][0] / best[i, 'upstream'][0], 'ours_rss_mb': best[i, 'ours'][1],
             'upstream_rss_mb': best[i, 'upstream'][1], 'ours_phases': best[i, 'ours'][2]}
            for i, (name, _, _) in enumerate(jobs)]


def print_step(rows, opt):
    print(f'\nTraining step, {opt.step_cfg}, {opt.step_imgsz} px, batch {opt.step_batch}, {rows[0]["ours"]["device"]}, '
          f'median of {opt.iters} steps, best of {opt.rounds} rounds '
          f'(ours: fast path on; upstream: requires_grad only)')
    print(f"{'freeze':>8}{'ours s/it':>11}{'upstream s/it':>15}{'ours/upstream':>15}{'ours img/s':>12}"
          f"{'upstr img/s':>13}{'ours RSS MB':>13}{'upstr RSS MB':>14}{'ours CUDA MB':>14}{'upstr CUDA MB':>15}")
    for r in rows:
        o, u = r['ours'], r['upstream']
        cuda = [f'{x["peak_cuda_mb"]:.0f}' if x['peak_cuda_mb'] is not None else '-' for x in (o, u)]
        print(f"{r['freeze']:>8}{o['sec_per_iter']:>11.3f}{u['sec_per_iter']:>15.3f}{r['ratio']:>14.2f}x"
              f"{o['images_per_s']:>12.1f}{u['images_per_s']:>13.1f}{o['peak_rss_mb']:>13.0f}{u['peak_rss_mb']:>14.0f}"
              f"{cuda[0]:>14}{cuda[1]:>15}")


def print_processes(rows, opt):
    print(f'\nWhole processes (wall time, best of {opt.rounds} interleaved rounds; peak RSS of the largest process)')
    print(f"{'what':<58}{'ours s':>8}{'upstream s':>12}{'ours/upstream':>15}{'ours RSS MB':>13}{'upstr RSS MB':>14}")
    for r in rows:
        print(f"{r['what']:<58}{r['ours_s']:>8.1f}{r['upstream_s']:>12.1f}{r['ratio']:>14.2f}x"
              f"{r['ours_rss_mb']:>13.0f}{r['upstream_rss_mb']:>14.0f}")
    for kind in ('train', 'fine-tune'):
        pair = [r for r in rows if r['what'].startswith(kind + ' ')]
        if len(pair) == 2:
            print(f"{kind}: freeze 0 -> 10 speed-up: ours {pair[0]['ours_s'] / pair[1]['ours_s']:.2f}x, "
                  f"upstream {pair[0]['upstream_s'] / pair[1]['upstream_s']:.2f}x")
    for r in rows:
        if r.get('ours_phases'):
            print(f"ours, {r['what']}: {r['ours_phases']}")


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--only', choices=['step', 'runs'], help='one table only')
    p.add_argument('--tiny', action='store_true', help='smoke-test sizes: ' + json.dumps(TINY))
    p.add_argument('--venv', default=str(ROOT / '.venv-upstream'))
    p.add_argument('--work', default=str(ROOT / 'runs/upstream'), help='data, runs and logs of this comparison')
    p.add_argument('--device', default='cpu')
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--step-cfg', default='v6/yolov5s.yaml')
    p.add_argument('--step-imgsz', type=int, default=320)
    p.add_argument('--step-batch', type=int, default=16)
    p.add_argument('--iters', type=int, default=8)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--freeze', nargs='+', default=['0', '10', 'all'], help='step table settings')
    p.add_argument('--train-cfg', default='yolov5s.yaml', help='whole-run model (release v3.1 yolov5s)')
    p.add_argument('--train-images', type=int, default=128)
    p.add_argument('--train-imgsz', type=int, default=320)
    p.add_argument('--train-batch', type=int, default=16)
    p.add_argument('--epochs', type=int, default=2, help='0: no training rows')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--weights', default=str(ROOT.parent / 'shared/weights/yolov5n.pt'))
    p.add_argument('--finetune-data', default=str(ROOT.parent / 'shared/data/coco64dev/coco64dev.yaml'))
    p.add_argument('--finetune-imgsz', type=int, default=320)
    p.add_argument('--finetune-epochs', type=int, default=20, help='fine-tune of --weights; 0: no fine-tune rows')
    p.add_argument('--val-data', default=str(ROOT.parent / 'shared/data/coco64dev/coco64dev.yaml'))
    p.add_argument('--val-imgsz', type=int, default=640)
    p.add_argument('--images', default=str(ROOT.parent / 'shared/images'), help='detect.py source')
    p.add_argument('--json', default=str(ROOT / 'benchmarks/results/upstream.json'))
    opt = p.parse_args(argv)
    if opt.tiny:
        for k, v in TINY.items():
            setattr(opt, k, v)
    return opt


def main(argv=None):
    opt = parse_opt(argv)
    venv, work = Path(opt.venv).resolve(), Path(opt.work).resolve()
    py = ensure_venv(venv)
    env = upstream_env(venv)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    result = {'config': vars(opt), 'machine': platform.platform(), 'cpus': os.cpu_count()}
    if opt.only != 'runs':
        result['step'] = step_rows(opt, py, env, work)
        print_step(result['step'], opt)
    if opt.only != 'step':
        result['processes'] = process_rows(opt, py, env, work)
        print_processes(result['processes'], opt)
    result['load_average'] = {'before': load_before, 'after': os.getloadavg()}
    print(f"load average (1, 5, 15 min): before {load_before}, after {result['load_average']['after']}")
    out = Path(opt.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
