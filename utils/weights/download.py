"""Finding weights: a path on disk, or an official YOLOv5 release file fetched on request.

    resolve_weights('runs/train/exp/weights/best.pt')   # exists -> returned as is
    resolve_weights('yolov5s.pt')                       # missing official name -> downloaded (v7.0 assets)

Weights are downloaded only here, only for the official names, and only when the caller asks for such a file
(through ``utils/fetch.py``, the HTTP download the data sets use too; a failed one leaves no partial file).
"""
import re
from pathlib import Path

from utils.fetch import fetch  # the one HTTP download (progress bar, atomic rename); a module name tests replace

RELEASE_URL = 'https://github.com/ultralytics/yolov5/releases/download/v7.0/{name}'
OFFICIAL_NAME = re.compile(r'yolov5[nsmlx]6?\.pt')  # yolov5n.pt ... yolov5x6.pt


def is_official_name(name):
    return bool(OFFICIAL_NAME.fullmatch(Path(name).name))


def resolve_weights(name_or_path):
    """An existing weights path, or an official release file downloaded to that path (bare name: working dir).

    Raises FileNotFoundError (one line) for any other missing path, or when the download fails.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if not is_official_name(path):
        raise FileNotFoundError(f'{path}: weights file not found')
    url = RELEASE_URL.format(name=path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fetch(url, path)
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        reason = str(getattr(e, 'reason', e)).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f'{path}: not on disk and the download from {url} failed ({reason}); '
                                f'download it yourself and put it at {path.resolve()}') from None
    return path
