"""What --cache features gains and loses: a frozen fine-tune with and without the feature cache, side by side.

    python benchmarks/feature_cache.py --data ../shared/data/voc07mini/voc07mini.yaml \\
        --weights ../shared/weights/yolov5n.pt --epochs 20 --imgsz 640 --views 2 4 8
    python benchmarks/feature_cache.py ... --holdout          # choose on a hold-out split of the training list

Each setting is one ``train.py`` run in its own process (same weights, data, epochs, image size, batch, hyp, seed):

    freeze10             --freeze 10 (today's frozen fine-tune, the reference)
    cacheK               --freeze 10 --cache features --cache-views K, for each K of --views
    cacheK-flip          ... with the cached maps flipped left-right in feature space (hyp feature_fliplr 0.5)
    cacheK-shift         ... shifted by whole coarse cells, up to 10% of the image (hyp feature_shift 0.1)
    cacheK-flipshift     both
    cacheK-mosaic        K half-size views per image, assembled 2 x 2 in feature space (hyp feature_mosaic 1)
    cacheK-crop          each sample trained on a window of 0.8 of its side, placed anew each epoch (feature_crop 0.8,
                         the default since it was chosen on the hold-out split: cacheK is the same)
    cacheK-whole         each sample trained whole (feature_crop 1; cacheK before the crop was the default)

Per setting: AP50 (the VOC devkit AP50, metrics/voc_mAP_0.5 of results.csv, for data with a VOC rule; else
mAP50) and mAP50-95 of the last epoch, the whole run's wall time (cache build included), the cache build's seconds
and size, seconds per training epoch, and the speedup of the wall time against the first setting. Writes OUT.md and
OUT.json (default benchmarks/results/feature_cache), rewritten after each setting; ``--resume`` keeps the rows of
OUT.json whose setting and flags are the ones asked for (as benchmarks/transfer.py does).

``--holdout``: train on the training list minus every ``--holdout-every``-th image and validate on those
(benchmarks/holdout.py), never on the data's test list: the split to choose K and the augmentation on.
"""
import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))
import transfer  # noqa: E402
from utils.train.config import FEATURE_CACHE_VIEWS  # noqa: E402
from utils.errors import InputError  # noqa: E402

FEATURE_AUG = {'flip': {'feature_fliplr': 0.5}, 'shift': {'feature_shift': 0.1},
               'flipshift': {'feature_fliplr': 0.5, 'feature_shift': 0.1}, 'mosaic': {'feature_mosaic': 1.0},
               'crop': {'feature_crop': 0.8}, 'whole': {'feature_crop': 1.0}}
CACHED = re.compile(r'cache(\d+)(?:-(flip|shift|flipshift|mosaic|crop|whole))?$')
DEFAULT_HYP = ROOT / 'data' / 'hyps' / 'hyp.transfer.yaml'  # train.py's hyp for a pretrained start


def default_settings(views):
    k = FEATURE_CACHE_VIEWS if FEATURE_CACHE_VIEWS in views else views[0]
    return ['freeze10', *[f'cache{v}' for v in views], f'cache{k}-flip', f'cache{k}-shift']


def aug_hyp(opt, variant):
    """A hyp file: the study's hyp with the feature-space augmentation of ``variant`` switched on."""
    base = yaml.safe_load(Path(opt.hyp or DEFAULT_HYP).read_text())
    path = Path(opt.project) / f'hyp.feature-{variant}.yaml'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**base, **FEATURE_AUG[variant]}, sort_keys=False))
    return path


def parse_settings(opt):
    """[(name, [train.py flags])] of --settings: freeze10, cacheK[-flip|-shift|-flipshift|-mosaic|-crop|-whole]."""
    out = []
    for name in opt.settings:
        m = CACHED.match(name)
        if name == 'freeze10':
            flags = ['--freeze', '10']
        elif m:
            flags = ['--freeze', '10', '--cache', 'features', '--cache-views', m.group(1)]
            if m.group(2):
                flags += ['--hyp', str(aug_hyp(opt, m.group(2)))]
        else:
            raise InputError(f'--settings {name}: expected freeze10 or '
                             f'cacheK[-flip|-shift|-flipshift|-mosaic|-crop|-whole]')
        out.append((name, flags))
    return out


def worker(opt, name, flags):
    """One setting in this process (benchmarks/transfer.py's timed run), with the cache's build time and size."""
    from utils.train import feature_cache
    built = {}
    build = feature_cache.build_feature_cache

    def recorded(*args, **kwargs):
        cache = build(*args, **kwargs)
        built.update(cache_build_s=cache.build_s, cache_mb=cache.nbytes / 2 ** 20, cache_where=cache.where)
        return cache

    feature_cache.build_feature_cache = recorded
    return {**transfer.worker(opt, name, flags), **built}


def run_setting(opt, name, flags):
    """One setting in a fresh process: benchmarks/transfer.py's row, with the last epoch's AP50 and mAP50-95."""
    row = transfer.run_setting(opt, name, flags, script=__file__)
    voc = row.get('final_voc') is not None
    row.update(ap50=row['final_voc'] if voc else row['final_map50'], map=row['final_map'], ap50_is_voc=voc)
    return row


def cell(value, spec):
    return '-' if value is None else f'{value:{spec}}'


def markdown_table(rows, opt):
    base = rows[0]['wall_s']
    metric = 'AP50 (VOC devkit)' if all(r['ap50_is_voc'] for r in rows) else 'mAP50'
    head = ['setting', metric, 'mAP50-95', 'wall s', 'cache build s', 'cache MB', 's/epoch', 'speedup']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for r in rows:
        cells = [f"{r['ap50']:.3f}", f"{r['map']:.3f}", f"{r['wall_s']:.0f}", cell(r.get('cache_build_s'), '.1f'),
                 cell(r.get('cache_mb'), ',.0f'), f"{r['s_per_epoch']:.1f}", f"{base / r['wall_s']:.2f}x"]
        lines.append(f"| {r['setting']} | " + ' | '.join(cells) + ' |')
    title = (f"{Path(opt.weights).name} on {Path(opt.data).name}: {opt.epochs} epochs, {opt.imgsz} px, batch "
             f"{opt.batch_size}, seed {opt.seed}, {'hyp ' + Path(opt.hyp).name if opt.hyp else 'default hyp'}, "
             f"device {opt.device or 'auto'}; speedup: wall time (cache build included) against {rows[0]['setting']}")
    reused = [r['setting'] for r in rows if r.get('reused')]
    if reused:
        title += f"; reused by --resume, times measured then: {', '.join(reused)}"
    return title + '\n\n' + '\n'.join(lines) + '\n'


def write_outputs(rows, opt, quiet=False):
    transfer.write_outputs(rows, opt, quiet, make_table=markdown_table, plot=False)


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default=str(ROOT.parent / 'shared/data/voc07mini/voc07mini.yaml'))
    p.add_argument('--weights', default=str(ROOT.parent / 'shared/weights/yolov5n.pt'))
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--imgsz', type=int, default=640)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--views', type=int, nargs='+', default=[2, 4, 8], help='K values of the cacheK settings')
    p.add_argument('--settings', nargs='+', default=None,
                   help='freeze10 and/or cacheK[-flip|-shift|-flipshift|-mosaic|-crop|-whole] (default: freeze10, '
                        'cacheK for each --views, and the flip and shift variants at the default K); the first is the '
                        'reference')
    transfer.add_run_options(p, val_every='auto', val_help="train.py's --val-every, every setting")
    p.add_argument('--holdout', action='store_true',
                   help='train on the training list minus a hold-out, validate on the hold-out (VOC data)')
    p.add_argument('--holdout-every', type=int, default=5, help='hold out every N-th training image')
    transfer.add_output_options(p, 'runs/feature-cache-study', 'benchmarks/results/feature_cache', 'OUT.md/.json')
    return p.parse_args(argv)


def main(argv=None):
    opt = parse_opt(argv)
    if opt.worker:
        return transfer.run_worker(opt, worker)
    opt.project = str(Path(opt.project).resolve())  # the settings run from the repository root
    try:
        if opt.holdout:
            from holdout import make_holdout
            opt.data = str(make_holdout(opt.data, Path(opt.project) / 'holdout', opt.holdout_every))
        opt.settings = opt.settings or default_settings(opt.views)
        settings = parse_settings(opt)
        reused = transfer.reusable_rows(opt, settings) if opt.resume else {}
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f'error: {e}')
    done = {name: {**row, 'reused': True} for name, row in reused.items()}
    for name, flags in settings:
        if name not in done:
            done[name] = run_setting(opt, name, flags)
            write_outputs([done[n] for n, _ in settings if n in done], opt, quiet=True)
    write_outputs([done[name] for name, _ in settings], opt)


if __name__ == '__main__':
    main()
