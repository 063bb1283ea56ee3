"""torch.hub entry points, as upstream YOLOv5's, working offline from this folder:

    model = torch.hub.load('path/to/yolov5-freeze', 'custom', path='best.pt', source='local')  # or .onnx, ...
    model = torch.hub.load('path/to/yolov5-freeze', 'yolov5n', source='local')  # ./yolov5n.pt, else downloaded
    results = model('bus.jpg'); results.print()
    results = model(cv2.imread('bus.jpg')[..., ::-1], augment=True)  # numpy images are RGB; test-time augmentation

The logic lives in utils/deploy/api.py; see the README's "Python API".
"""
dependencies = ['torch', 'torchvision', 'numpy', 'cv2', 'yaml']


def custom(path='yolov5s.pt', autoshape=True, _verbose=True, device=None):
    """A model from any weights file: our or official .pt, .torchscript, .onnx, or an OpenVINO export folder."""
    from utils.deploy.api import load
    return load(path, device=device, autoshape=autoshape)


def _official(name, pretrained, channels, classes, autoshape, device):
    from utils.deploy.api import official
    return official(name, pretrained, channels, classes, device, autoshape)


def yolov5n(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    return _official('yolov5n', pretrained, channels, classes, autoshape, device)


def yolov5s(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    return _official('yolov5s', pretrained, channels, classes, autoshape, device)


def yolov5m(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    return _official('yolov5m', pretrained, channels, classes, autoshape, device)


def yolov5l(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    return _official('yolov5l', pretrained, channels, classes, autoshape, device)


def yolov5x(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None):
    return _official('yolov5x', pretrained, channels, classes, autoshape, device)
