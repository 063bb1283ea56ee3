"""``val.py --task study``: accuracy and speed of each model over a range of image sizes, as a table, CSV and plot.

    sizes = parse_sizes(['256:1536:128'])            # upstream's range; or explicit sizes ['320', '640']
    rows = [StudyRow.of('yolov5n', 640, result), ...]  # one per (model, size), from val.run's EvalResult
    write_study(rows, save_dir)   # study.md (the table printed), study.csv, study.png (mAP and ms vs size)
"""
import csv
from dataclasses import astuple, dataclass
from pathlib import Path

from utils.errors import InputError

DEFAULT_SIZES = '256:1536:128'  # upstream YOLOv5's study range: 256, 384, ... 1536
COLUMNS = ('model', 'imgsz', 'map50', 'map', 'ms_inference', 'ms_total')


@dataclass(frozen=True)
class StudyRow:
    model: str  # weights file stem
    imgsz: int
    map50: float
    map: float  # mAP50-95
    ms_inference: float  # per image
    ms_total: float  # pre-process + inference + NMS, per image

    @classmethod
    def of(cls, model, imgsz, result):
        """The row of an ``EvalResult`` (utils/eval/evaluator.py)."""
        s = result.speed
        return cls(model, int(imgsz), float(result.map50), float(result.map), s.inference, s.total)


def parse_sizes(specs):
    """Image sizes from items that are sizes ('640') or ranges 'start:stop:step' (stop included), in order and
    without repeats. A bad item is a one-line InputError naming --study-sizes."""
    sizes = []
    for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
        parts = str(spec).split(':')
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = None
        if nums is None or len(nums) not in (1, 3) or min(nums) < 1:
            raise InputError(f"--study-sizes {spec}: expected a size such as 640 or a range start:stop:step such "
                             f"as {DEFAULT_SIZES}, all positive")
        sizes += nums if len(nums) == 1 else list(range(nums[0], nums[1] + 1, nums[2]))
    if not sizes:
        raise InputError(f'--study-sizes {" ".join(map(str, specs))}: no sizes in that range')
    return list(dict.fromkeys(sizes))


def format_table(rows):
    """The rows as a Markdown table (what is printed and saved as study.md)."""
    lines = ['| model | imgsz | mAP50 | mAP50-95 | inference ms/img | total ms/img |',
             '| --- | ---: | ---: | ---: | ---: | ---: |']
    lines += [f'| {r.model} | {r.imgsz} | {r.map50:.4f} | {r.map:.4f} | {r.ms_inference:.1f} | {r.ms_total:.1f} |'
              for r in rows]
    return '\n'.join(lines)


def write_csv(rows, path):
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(astuple(r) for r in rows)
    return path


def plot_study(rows, path):
    """mAP50-95 and mAP50 against image size (left), and mAP50-95 against ms per image (right), one line per
    model."""
    from matplotlib.figure import Figure  # lazy: matplotlib only when plotting
    fig = Figure(figsize=(12, 5), tight_layout=True)
    by_size, by_speed = fig.subplots(1, 2)
    for model in dict.fromkeys(r.model for r in rows):
        mine = sorted((r for r in rows if r.model == model), key=lambda r: r.imgsz)
        sizes = [r.imgsz for r in mine]
        line, = by_size.plot(sizes, [r.map for r in mine], '.-', label=f'{model} mAP50-95')
        by_size.plot(sizes, [r.map50 for r in mine], '.--', color=line.get_color(), label=f'{model} mAP50')
        by_speed.plot([r.ms_inference for r in mine], [r.map for r in mine], '.-', label=model)
        for r in mine:
            by_speed.annotate(str(r.imgsz), (r.ms_inference, r.map), fontsize=7)
    by_size.set(xlabel='image size (pixels)', ylabel='mAP', title='accuracy vs image size')
    by_speed.set(xlabel='inference ms per image', ylabel='mAP50-95', title='accuracy vs speed')
    for ax in (by_size, by_speed):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=150)
    return path


def write_study(rows, save_dir):
    """Print the table and write study.md, study.csv and study.png into ``save_dir``; returns the paths."""
    save_dir = Path(save_dir)
    table = format_table(rows)
    print(f'\nStudy over image sizes\n{table}')
    md = save_dir / 'study.md'
    md.write_text(table + '\n')
    paths = [md, write_csv(rows, save_dir / 'study.csv'), plot_study(rows, save_dir / 'study.png')]
    print(f"Study saved to {', '.join(str(p) for p in paths)}")
    return paths
