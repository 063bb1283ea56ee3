"""What test-time augmentation (val.py --augment) gains in AP50 and costs in time.

    python benchmarks/tta.py           # yolov5n and yolov5s on voc07mini's test list at 640 px (zero-shot VOC)
    python benchmarks/tta.py --weights ../shared/weights/yolov5n.pt --imgsz 320 --rounds 3

Each model is validated with ``val.run`` without and with ``augment``, back to back (taking turns ``--rounds``
times): AP50 and AP50-95 of both, and the whole validation's seconds. On a shared machine the load changes
within minutes, so the inference time is also measured interleaved: on the first ``--timing-batches`` batches,
each batch is run plain and then with TTA, in turn, so that both see the same load; the cost is the ratio.
The COCO checkpoints are evaluated on VOC through the class mapping (val.py's zero-shot path). Writes a Markdown
table and JSON (default benchmarks/results/tta_voc).
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
sys.path.insert(0, str(ROOT))


def validate(opt, weights, augment, save_dir):
    """(EvalResult, wall seconds) of one val.run."""
    import val
    t = time.perf_counter()
    result = val.run(opt.data, weights=weights, imgsz=opt.imgsz, batch_size=opt.batch_size, device='cpu',
                     workers=opt.workers, plots=False, augment=augment, save_dir=save_dir)
    return result, time.perf_counter() - t


def measure(opt, weights, save_dir):
    """One row: both runs' accuracy, the median times of each, and the TTA/plain ratios."""
    runs = {False: [], True: []}
    for _ in range(opt.rounds):
        for augment in (False, True):
            runs[augment].append(validate(opt, weights, augment, save_dir))

    def median(values):
        return sorted(values)[len(values) // 2]
    row = {'model': Path(weights).stem, 'images': runs[False][-1][0].seen}
    for augment, key in ((False, 'plain'), (True, 'tta')):
        result = runs[augment][-1][0]
        row.update({f'{key}_map50': result.map50, f'{key}_map': result.map, f'{key}_voc_map': result.voc_map,
                    f'{key}_ms': median([r.speed.inference for r, _ in runs[augment]]),
                    f'{key}_s': median([s for _, s in runs[augment]])})
    row.update(gain_map50=row['tta_map50'] - row['plain_map50'], gain_map=row['tta_map'] - row['plain_map'],
               ms_ratio=row['tta_ms'] / row['plain_ms'], s_ratio=row['tta_s'] / row['plain_s'])
    plain_ms, tta_ms, images = interleaved_ms(opt, weights)
    row.update(interleaved_plain_ms=plain_ms, interleaved_tta_ms=tta_ms, interleaved_images=images,
               interleaved_ratio=tta_ms / plain_ms)
    return row


def interleaved_ms(opt, weights):
    """(plain, TTA) inference ms per image, each batch run plain then with TTA in turn (after one warm-up)."""
    import torch
    import val
    from utils.deploy.tta import with_tta
    model = val.load_for_val(weights, torch.device('cpu'))
    augmented = with_tta(model)
    loader = val.build_dataloader(val.resolve_data(opt.data), 'val', opt.imgsz, opt.batch_size, model.stride,
                                  opt.workers, single_cls=False)
    seconds, images = [0.0, 0.0], 0
    for i, (imgs, *_) in enumerate(loader):
        if i == opt.timing_batches:
            break
        x = imgs.float() / 255
        if i == 0:
            model(x[:1]), augmented(x[:1])  # warm-up
        for k, run in enumerate((model, augmented)):
            t = time.perf_counter()
            run(x)
            seconds[k] += time.perf_counter() - t
        images += len(x)
    return seconds[0] / images * 1e3, seconds[1] / images * 1e3, images


def table(rows, opt, images):
    head = (f'VOC2007 test members of voc07mini ({images} images), {opt.imgsz} px, conf 0.001, IoU 0.6, zero-shot '
            f'through the COCO->VOC class mapping; CPU shared with other jobs. Time cost: inference ms per image '
            f'measured interleaved (plain and TTA in turn on the same {rows[0]["interleaved_images"]} images), '
            f'and the ratio of the two whole validations\' seconds (run back to back; noisier).\n\n'
            '| model | AP50 | AP50 TTA | gain | AP50-95 | AP50-95 TTA | gain | ms/img | ms/img TTA | time ratio '
            '(inference, interleaved) | time ratio (whole val) |\n'
            '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    lines = [f"| {r['model']} | {r['plain_map50']:.4f} | {r['tta_map50']:.4f} | {r['gain_map50']:+.4f} | "
             f"{r['plain_map']:.4f} | {r['tta_map']:.4f} | {r['gain_map']:+.4f} | {r['interleaved_plain_ms']:.0f} | "
             f"{r['interleaved_tta_ms']:.0f} | {r['interleaved_ratio']:.2f}x | {r['s_ratio']:.2f}x |" for r in rows]
    return '\n'.join([head] + lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', nargs='+', default=[str(SHARED / 'weights/yolov5n.pt'),
                                                    str(SHARED / 'weights/yolov5s.pt')])
    p.add_argument('--data', default=str(SHARED / 'data/voc07mini/voc07mini.yaml'))
    p.add_argument('--imgsz', type=int, default=640)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--rounds', type=int, default=1, help='plain/TTA validation pairs per model (times: the median)')
    p.add_argument('--timing-batches', type=int, default=4, help='batches timed interleaved, plain then TTA')
    p.add_argument('--out', default=str(ROOT / 'benchmarks/results/tta_voc'), help='writes OUT.md and OUT.json')
    opt = p.parse_args(argv)
    cmd = ('python benchmarks/tta.py ' + ' '.join(sys.argv[1:] if argv is None else argv)).strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in opt.weights:  # the table is rewritten after each model: a long run keeps what it has measured
            rows.append(measure(opt, w, Path(tmp)))
            write(rows, opt, cmd)
    return rows


def write(rows, opt, cmd):
    text = table(rows, opt, rows[0]['images'])
    print(text)
    out = Path(opt.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.md').write_text(f'# Test-time augmentation on VOC\n\n`{cmd}`\n\n{text}\n')
    out.with_suffix('.json').write_text(json.dumps({'command': cmd, 'config': vars(opt),
                                                    'machine': platform.platform(), 'results': rows}, indent=2))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")

if __name__ == '__main__':
    main()
