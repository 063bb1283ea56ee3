"""Is a fine-tune better than its start, or is the change within what the test list's images alone would move?

    python benchmarks/ap_gain.py --data ../shared/data/voc07mini/voc07mini.yaml --imgsz 320 \\
        --base ../shared/weights/yolov5n.pt --new runs/voc-study/freeze0/weights/last.pt \\
        --out benchmarks/results/ap_gain_voc

Validates ``--base`` and each ``--new`` weights on the data's val list (VOC devkit AP50, as val.py does, a COCO
checkpoint through its class mapping) and prints, per model, its AP50 and the change against the base with 95%
intervals from a paired bootstrap over the images (utils/eval/bootstrap.py): the same draws of images score both
models. ``p(not better)`` is the share of draws in which the model does not beat the base. Writes OUT.json/.md.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.errors import InputError  # noqa: E402


def matches_for(weights, data, opt):
    """The devkit matches of every image, from one val.py run of ``weights``."""
    import val
    from utils.eval.bootstrap import ImageMatches
    matches = ImageMatches(data['nc'], data['eval'])
    val.run(data, weights, batch_size=opt.batch_size, imgsz=opt.imgsz, device=opt.device, workers=opt.workers,
            plots=False, project=opt.project, name=Path(weights).stem, exist_ok=True, observers=[matches])
    return matches


def gain_rows(opt):
    from utils.data.config import check_dataset
    from utils.eval.bootstrap import paired_bootstrap
    data = check_dataset(opt.data)
    if data['eval'] not in ('voc07', 'voc12'):
        raise InputError(f"{opt.data}: the AP gain needs a VOC devkit rule (eval: voc07 or voc12), got "
                         f"{data['eval'] or 'none'}")
    base = matches_for(opt.base, data, opt)
    rows = []
    for weights in opt.new:
        new = matches_for(weights, data, opt)
        if new.keys() != base.keys():
            raise InputError(f'{weights}: scored other images than {opt.base}')
        ci = paired_bootstrap(base.weighted_ap(), new.weighted_ap(), opt.resamples, opt.seed)
        rows.append({'weights': str(weights), **ci})
    return rows


def table(opt, rows):
    head = ['weights', 'AP50 (95% interval)', f'change vs {Path(opt.base).name} (95% interval)', 'p(not better)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    if rows:
        r = rows[0]
        lines.append(f"| {opt.base} (base) | {r['a']:.3f} ({r['a_low']:.3f}-{r['a_high']:.3f}) | | |")
    for r in rows:
        lines.append(f"| {r['weights']} | {r['b']:.3f} ({r['b_low']:.3f}-{r['b_high']:.3f}) | {r['diff']:+.3f} "
                     f"({r['diff_low']:+.3f} to {r['diff_high']:+.3f}) | {r['p_not_better']:.3f} |")
    return '\n'.join(lines)


def parse_opt(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', required=True, help='data YAML with a VOC rule (eval: voc07 or voc12)')
    ap.add_argument('--base', required=True, help='the start: weights every other is compared with')
    ap.add_argument('--new', nargs='+', required=True, help='fine-tuned weights')
    ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--device', default='')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--resamples', type=int, default=2000, help='bootstrap draws of the images')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--project', default=str(ROOT / 'runs' / 'ap_gain'), help="val.py's output folder")
    ap.add_argument('--out', default='', help='writes OUT.json and OUT.md')
    return ap.parse_args(argv)


def main(argv=None):
    opt = parse_opt(argv)
    if opt.resamples < 1:
        sys.exit(f'error: --resamples {opt.resamples}: expected at least 1')
    try:
        rows = gain_rows(opt)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f'error: {e}')
    text = table(opt, rows)
    print(f'\nVOC devkit AP50 on {opt.data}, {opt.imgsz} px; 95% intervals from {opt.resamples} paired bootstrap '
          f'draws of its images (seed {opt.seed})\n{text}')
    if opt.out:
        out = Path(opt.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in vars(opt).items() if k not in ('out', 'project')}
        Path(f'{out}.json').write_text(json.dumps({'config': config, 'rows': rows}, indent=1))
        Path(f'{out}.md').write_text(text + '\n')
        print(f'wrote {out}.json, {out}.md')


if __name__ == '__main__':
    main()
