"""What the Python API returns: the detections of a batch of images, in the shapes upstream YOLOv5 users know.

    results = model(['bus.jpg', 'zidane.jpg'])
    results.xyxy[0]          # (n, 6) tensor per image: x1, y1, x2, y2, conf, cls (pixels)
    results.xywhn[0]         # the same boxes as centre + size, normalised by the image size
    results.pandas().xyxy[0] # a DataFrame (needs pandas): xmin ymin xmax ymax confidence class name
    results.print()          # 'image 1/2 bus.jpg: 1080x810 4 persons, 1 bus' ...
    results.save()           # annotated images under runs/detect/exp{N}/
    results.crop()           # crops/<class>/<name>.jpg, and a list of dicts with each crop
    results.render()         # annotated copies of the images (BGR numpy arrays)
"""
from pathlib import Path
from types import SimpleNamespace

import cv2
import torch

from utils.deploy.annotate import annotate, box_label, crop_box
from utils.boxes import xyxy2xywh
from utils.optional import require
from utils.deploy.predict import describe
from utils.runs import UniqueStems, increment_path

PANDAS_COLUMNS = {'xyxy': ['xmin', 'ymin', 'xmax', 'ymax'], 'xyxyn': ['xmin', 'ymin', 'xmax', 'ymax'],
                  'xywh': ['xcenter', 'ycenter', 'width', 'height'], 'xywhn': ['xcenter', 'ycenter', 'width', 'height']}


class Detections:
    """Detections of ``len(ims)`` images: ``ims`` (original BGR arrays), ``files`` (names), ``names`` (classes),
    ``times`` (ms per image: pre-process, inference, NMS) and the box views ``xyxy``/``xyxyn``/``xywh``/``xywhn``."""

    def __init__(self, ims, pred, files, names, times=(0.0, 0.0, 0.0), input_shapes=None):
        self.ims, self.files, self.names = list(ims), list(files), list(names)
        self.pred = [p.float().cpu() for p in pred]
        self.times, self.input_shapes = tuple(times), list(input_shapes or [None] * len(self.ims))
        self.n = len(self.pred)
        gains = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1.0, 1.0]) for im in self.ims]
        self.xyxy = self.pred
        self.xywh = [torch.cat((xyxy2xywh(p[:, :4]), p[:, 4:]), 1) for p in self.pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gains)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gains)]

    def __len__(self):
        return self.n

    def __str__(self):
        lines = [f'image {i + 1}/{self.n} {f}: {im.shape[0]}x{im.shape[1]} {describe(p, self.names)}'
                 for i, (im, f, p) in enumerate(zip(self.ims, self.files, self.pred))]
        pre, inf, nms = self.times
        lines.append(f'Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image')
        return '\n'.join(lines)

    def __repr__(self):
        return f'<Detections of {self.n} image(s): {sum(len(p) for p in self.pred)} boxes>'

    def print(self):
        print(str(self))

    def render(self, labels=True, conf=True, line_width=None):
        """Annotated copies of the images (BGR, as OpenCV); the originals in ``ims`` stay untouched."""
        return [annotate(im, p, self.names, line_width, hide_labels=not labels, hide_conf=not conf)
                for im, p in zip(self.ims, self.pred)]

    def _stems(self):
        unique = UniqueStems()
        return [unique(i, Path(f).stem) for i, f in enumerate(self.files)]

    def save(self, save_dir='runs/detect/exp', exist_ok=False, labels=True):
        """Write the annotated images to ``save_dir`` (the next free exp{N} unless ``exist_ok``); returns it."""
        save_dir = increment_path(save_dir, exist_ok=exist_ok, mkdir=True)
        for stem, im in zip(self._stems(), self.render(labels)):
            cv2.imwrite(str(save_dir / f'{stem}.jpg'), im)
        print(f'Saved {self.n} image(s) to {save_dir}')
        return save_dir

    def crop(self, save=True, save_dir='runs/detect/exp', exist_ok=False):
        """One dict per box: ``box`` (xyxy), ``conf``, ``cls``, ``label``, ``im`` (BGR crop). With ``save``, also
        ``crops/<class>/<name>.jpg`` under ``save_dir`` (the next free exp{N} unless ``exist_ok``)."""
        save_dir = increment_path(save_dir, exist_ok=exist_ok, mkdir=True) if save else None
        crops = []
        for stem, im, p in zip(self._stems(), self.ims, self.pred):
            for *box, conf, cls in p.tolist():
                name = self.names[int(cls)]
                crop = {'box': box, 'conf': conf, 'cls': int(cls), 'label': box_label(name, conf),
                        'im': crop_box(im, box)}
                if save:
                    folder = save_dir / 'crops' / name
                    folder.mkdir(parents=True, exist_ok=True)
                    crop['file'] = increment_path(folder / f'{stem}.jpg')
                    cv2.imwrite(str(crop['file']), crop['im'])
                crops.append(crop)
        if save:
            print(f'Saved {len(crops)} crop(s) to {save_dir / "crops"}')
        return crops

    def pandas(self):
        """The four box views as lists of DataFrames (one per image), with ``confidence``, ``class`` and ``name``."""
        pd = require('pandas', feature='Detections.pandas()')
        views = {}
        for view, columns in PANDAS_COLUMNS.items():
            frames = []
            for p in getattr(self, view):
                df = pd.DataFrame(p[:, :5].tolist(), columns=columns + ['confidence'])
                df['class'] = p[:, 5].long().tolist()
                df['name'] = [self.names[c] for c in df['class']]
                frames.append(df)
            views[view] = frames
        return SimpleNamespace(**views)
