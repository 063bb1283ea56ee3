"""Where detect.py reads its pictures from: image files, folders, globs, .txt lists, videos, webcams and streams.

``open_source(source, vid_stride)`` checks the source up front (one-line ``FileNotFoundError`` /
``ValueError`` naming it when it is missing, empty, of an unknown type, or no camera answers) and returns an
iterable of ``Frame`` records, one per image or per kept video frame, each with the BGR image as read by
OpenCV. A corrupt file inside a multi-file source comes out as a ``Frame`` with ``image=None`` and an
``error`` message, so the caller can report and skip it; a single corrupt file is an error.
Network streams (``rtsp://``, ``rtmp://``, ``http(s)://`` video) are read frame by frame through OpenCV's FFmpeg
backend, with bounded open/read timeouts.

Usage:
    for f in open_source('data/images'):
        if f.image is None:
            print(f.error)
"""
import contextlib
import glob
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from utils.errors import InputError

IMG_FORMATS = ('bmp', 'dng', 'jpeg', 'jpg', 'mpo', 'png', 'tif', 'tiff', 'webp', 'pfm')
VID_FORMATS = ('asf', 'avi', 'gif', 'm4v', 'mkv', 'mov', 'mp4', 'mpeg', 'mpg', 'ts', 'wmv')
STREAM_PREFIXES = ('rtsp://', 'rtmp://', 'http://', 'https://')
STREAM_TIMEOUT_MS = 15000  # give up on a stream that does not open, or stalls, for this long


@dataclass
class Frame:
    """One picture to run the detector on.

    ``index``/``count``: position of the file in the source (1-based) and number of files.
    ``frame``: 1-based frame number inside a video or webcam stream, None for a still image.
    ``frames``: frames in the video (0 when unknown, e.g. a webcam); ``fps``: its frame rate.
    """
    path: str
    kind: str  # 'image', 'video', 'webcam' or 'stream'
    index: int
    count: int
    image: np.ndarray = None
    frame: int = None
    frames: int = 0
    fps: float = 0.0
    error: str = None


def suffix_of(path):
    return Path(str(path)).suffix[1:].lower()


def is_image(path):
    return suffix_of(path) in IMG_FORMATS


def is_video(path):
    return suffix_of(path) in VID_FORMATS


@contextlib.contextmanager
def quiet_opencv():
    """Silence OpenCV's own warnings (e.g. while probing a camera), so our one-line message stands alone."""
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def media_files(paths, origin):
    """Keep the image and video files of ``paths``; error naming ``origin`` when none is left."""
    files = [str(p) for p in paths if Path(p).is_file() and (is_image(p) or is_video(p))]
    if not files:
        raise FileNotFoundError(f'{origin}: no images or videos found '
                                f'(images: {", ".join(IMG_FORMATS)}; videos: {", ".join(VID_FORMATS)})')
    return files


def check_media_file(path):
    """A single named file must exist and have a known image or video suffix."""
    if not Path(path).is_file():
        raise FileNotFoundError(f'{path}: source not found')
    if not (is_image(path) or is_video(path)):
        raise InputError(f"{path}: unsupported file type '.{suffix_of(path)}' "
                         f'(images: {", ".join(IMG_FORMATS)}; videos: {", ".join(VID_FORMATS)})')
    return str(path)


def read_list_file(path):
    """A .txt source: one image/video path per line; relative paths are taken from the list's folder."""
    lines = [s.strip() for s in Path(path).read_text(errors='replace').splitlines()]
    entries = [s for s in lines if s and not s.startswith('#')]
    if not entries:
        raise FileNotFoundError(f'{path}: the list is empty')
    files = []
    for entry in entries:
        p = Path(entry)
        if not p.is_absolute() and not p.exists():
            p = Path(path).parent / p
        if not p.is_file():
            raise FileNotFoundError(f'{path}: listed file {entry} not found')
        files.append(check_media_file(p))
    return files


def resolve_files(source):
    """Expand a file / folder / glob / .txt list into a sorted list of image and video paths."""
    source = str(source)
    if any(c in source for c in '*?['):
        matches = sorted(glob.glob(source, recursive=True))
        if not matches:
            raise FileNotFoundError(f'{source}: glob matched no files')
        return media_files(matches, source)
    path = Path(source)
    if path.is_dir():
        return media_files(sorted(path.iterdir()), source)
    if path.is_file() and path.suffix.lower() == '.txt':
        return read_list_file(path)
    return [check_media_file(path)]


def read_image(path):
    """BGR image, or raise ValueError naming the file when OpenCV cannot decode it."""
    image = cv2.imread(str(path))
    if image is None or image.size == 0:
        raise InputError(f'{path}: unreadable or corrupt image')
    return image


def open_video(path):
    with quiet_opencv():
        cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InputError(f'{path}: unreadable or corrupt video')
    return cap


def read_frames(cap, path, kind, index, count, vid_stride):
    """Yield every ``vid_stride``-th frame of an open capture (frame numbers count from 1), then release it."""
    frames = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if kind in ('video', 'stream') else 0
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    number = 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            number += 1
            yield Frame(path, kind, index, count, image, number, frames, fps)
            for _ in range(vid_stride - 1):  # skip frames cheaply: grab without decoding
                if not cap.grab():
                    return
                number += 1
    finally:
        cap.release()


class FileSource:
    """Images and videos from a list of files, in order. A bad file in a multi-file list is reported, not fatal."""

    def __init__(self, files, vid_stride=1):
        self.files = files
        self.vid_stride = vid_stride
        if len(files) == 1:  # a single named file: a corrupt one is an error right away
            self._check_readable(files[0])

    @staticmethod
    def _check_readable(path):
        if is_image(path):
            read_image(path)
        else:
            open_video(path).release()

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        count = len(self.files)
        for index, path in enumerate(self.files, 1):
            try:
                if is_image(path):
                    yield Frame(path, 'image', index, count, read_image(path))
                else:
                    yield from read_frames(open_video(path), path, 'video', index, count, self.vid_stride)
            except ValueError as e:
                yield Frame(path, 'image' if is_image(path) else 'video', index, count, error=str(e))


class WebcamSource:
    """Frames from a local camera by index, until the stream ends or the user interrupts."""

    def __init__(self, index, vid_stride=1):
        self.index = int(index)
        self.vid_stride = vid_stride
        with quiet_opencv():
            self.cap = cv2.VideoCapture(self.index)
        if not self.cap.isOpened():
            self.cap.release()
            raise InputError(f'webcam {self.index}: no camera found at this index (is one connected?)')

    def __len__(self):
        return 1

    def __iter__(self):
        return read_frames(self.cap, str(self.index), 'webcam', 1, 1, self.vid_stride)


def redact_url(url):
    """``url`` with any password replaced by ``***`` (stream URLs often carry credentials)."""
    return re.sub(r'^([a-z]+://[^/:@]+):[^/@]*@', r'\1:***@', url, flags=re.IGNORECASE)


def stream_stem(url):
    """A file stem for a stream's outputs: the last path part without suffix, else the host, else 'stream'."""
    parts = urlsplit(url)
    stem = Path(parts.path).stem or (parts.hostname or '')
    return re.sub(r'[^\w.-]', '_', stem) or 'stream'


class StreamSource:
    """Frames from a network stream (RTSP/RTMP/HTTP video) through OpenCV's FFmpeg backend, until it ends."""

    def __init__(self, url, vid_stride=1):
        self.url, self.vid_stride = url, vid_stride
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        with quiet_opencv():
            self.cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        if not self.cap.isOpened():
            self.cap.release()
            raise InputError(f'{redact_url(url)}: cannot open the stream (OpenCV FFmpeg backend; is the address '
                             f'right and reachable?)')

    def __len__(self):
        return 1

    def __iter__(self):
        return read_frames(self.cap, redact_url(self.url), 'stream', 1, 1, self.vid_stride)


def open_source(source, vid_stride=1):
    """Check ``source`` and return an iterable of ``Frame``s (see the module docstring)."""
    source = str(source).strip()
    if not source:
        raise InputError('--source is empty: give an image, folder, glob, .txt list, video or webcam index')
    if not isinstance(vid_stride, int) or vid_stride < 1:
        raise InputError(f'--vid-stride {vid_stride}: must be a whole number >= 1')
    if source.isdecimal():
        return WebcamSource(source, vid_stride)
    if source.lower().startswith(STREAM_PREFIXES):
        if is_image(urlsplit(source).path):
            raise InputError(f'{redact_url(source)}: images are not downloaded; save the file and pass its path '
                             f'(URLs are read as video streams)')
        return StreamSource(source, vid_stride)
    return FileSource(resolve_files(source), vid_stride)
