"""torch.hub entry points, as upstream YOLOv5's, working offline from this folder:

    model = torch.hub.load('path/to/yolov5-freeze', 'custom', path='best.pt', source='local')  # or .onnx, ...
    model = torch.hub.load('path/to/yolov5-freeze', 'yolov5n', source='local')  # ./yolov5n.pt, else downloaded
    model = torch.hub.load('path/to/yolov5-freeze', 'yolov5s6', source='local')  # P6 model; use size=1280
    results = model('bus.jpg'); results.print()
    results = model(cv2.imread('bus.jpg')[..., ::-1], augment=True)  # numpy images are RGB; test-time augmentation

The logic lives in utils/deploy/api.py; see docs/deployment.md, "Python API".
"""
dependencies = ['torch', 'torchvision', 'numpy', 'cv2', 'yaml']


def custom(path='yolov5s.pt', autoshape=True, _verbose=True, device=None):
    """A model from any weights file: our or official .pt, .torchscript, .onnx, .tflite or an OpenVINO folder."""
    from utils.deploy.api import load
    return load(path, device=device, autoshape=autoshape)


def _entry_point(name):
    """Upstream's entry point ``name`` (yolov5n ... yolov5x6), as a function (utils/deploy/api.py ``official``)."""
    def entry(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
        from utils.deploy.api import official
        return official(name, pretrained, channels, classes, device, autoshape)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f'{name}: the official {name}.pt (./{name}.pt, else downloaded) with ``pretrained``, '
                     f'else a fresh models/v6/{name}.yaml; ``classes`` != 80 transfers the pretrained weights.')
    return entry


# P5 models (three output levels, 640 px), then P6 models (four levels P3-P6, strides 8-64, trained at 1280 px)
yolov5n, yolov5s, yolov5m, yolov5l, yolov5x = map(_entry_point, ('yolov5n', 'yolov5s', 'yolov5m', 'yolov5l', 'yolov5x'))
yolov5n6, yolov5s6, yolov5m6, yolov5l6, yolov5x6 = map(_entry_point,
                                                      ('yolov5n6', 'yolov5s6', 'yolov5m6', 'yolov5l6', 'yolov5x6'))
