"""Upstream YOLOv5's P6 models (yolov5n6 ... yolov5x6) as reference data: what tests/test_models_p6.py checks
models/v6/yolov5?6.yaml against, without upstream ever being imported by this project or its tests.

Run ONCE, by hand, in a separate environment holding upstream YOLOv5 (PyPI ``yolov5`` 7.0.13, release v7.0):

    python3 -m venv /work/.venv-upstream
    /work/.venv-upstream/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/.venv-upstream/bin/pip install yolov5==7.0.13 'setuptools<81'   # v7.0 imports pkg_resources
    YOLOV5_CONFIG_DIR=/tmp/yolov5-config YOLO_OFFLINE=1 \
        /work/.venv-upstream/bin/python benchmarks/upstream_p6_shapes.py   # -> tests/data/p6_upstream_shapes.json.gz

For each model it builds upstream's own YAML (``yolov5/models/hub/yolov5?6.yaml`` of the installed package) with
upstream's ``Model`` and records the parameter count, the strides, ``Detect.anchors`` (grid units, after
upstream's anchor-order check) and the ordered (name, shape) list of the state dict. The output is gzipped JSON
written with a fixed timestamp, so a re-run with the same upstream gives the same bytes.
"""
import argparse
import gzip
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / 'tests' / 'data' / 'p6_upstream_shapes.json.gz'
SIZES = 'nsmlx'


def describe(model):
    """The facts the test compares, from an upstream ``DetectionModel``."""
    det = model.model[-1]
    return {'params': sum(p.numel() for p in model.parameters()),
            'stride': [float(s) for s in det.stride],
            'anchors': det.anchors.tolist(),
            'state_dict': [[k, list(v.shape)] for k, v in model.state_dict().items()]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=OUT)
    opt = parser.parse_args()
    import torch  # the upstream environment's
    import yolov5
    from yolov5.models.yolo import Model
    hub = Path(yolov5.__file__).parent / 'models' / 'hub'
    torch.manual_seed(0)
    data = {'source': f'yolov5 {yolov5.__version__} (PyPI), models/hub/yolov5?6.yaml', 'models': {}}
    for s in SIZES:
        name = f'yolov5{s}6'
        data['models'][name] = describe(Model(str(hub / f'{name}.yaml')))
        print(name, data['models'][name]['params'], 'parameters')
    opt.out.parent.mkdir(parents=True, exist_ok=True)
    with open(opt.out, 'wb') as raw, gzip.GzipFile(fileobj=raw, mode='wb', mtime=0) as f:
        f.write(json.dumps(data, separators=(',', ':')).encode())
    print(f'wrote {opt.out} ({opt.out.stat().st_size:,} bytes)')


if __name__ == '__main__':
    main()
