"""Run a YOLOv5 model (.pt, TorchScript, ONNX, OpenVINO, TFLite) on images, folders, globs, .txt lists, videos, a webcam
or a network stream, and save what it finds.

Usage:
    python detect.py --weights runs/train/exp/weights/best.pt --source path/to/images   # folder
    python detect.py --weights best.pt --source 'shots/*.jpg' --save-txt --save-conf    # glob + labels
    python detect.py --weights best.pt --source clip.mp4 --vid-stride 2 --save-crop     # video
    python detect.py --weights best.pt --source 0                                       # webcam 0
    python detect.py --weights best.onnx --source rtsp://192.168.1.5/live --vid-stride 5 # stream, every 5th frame
    python detect.py --weights best.pt --source path/to/images --augment                # test-time augmentation
    python detect.py --weights a.pt b.pt --source path/to/images                        # ensemble

Results go to runs/detect/exp{N}/: annotated images (same name) and videos (<name>.mp4), labels/<name>.txt
(`cls cx cy w h [conf]`, normalised; video frames as <name>_<frame>.txt) and crops/<class>/<name>.jpg.
From Python: ``detect.run(weights=..., source=...)`` returns one dict per image or frame.
"""
from pathlib import Path

import cv2

from utils.deploy.annotate import annotate, crop_box
from utils.deploy.ensemble import load_models
from utils.boxes import yolo_label_lines
from utils.cli import ArgumentParser, run_cli
from utils.deploy.predict import Predictor, describe
from utils.runs import UniqueStems, increment_path, keep_freed_memory, select_device
from utils.deploy.sources import open_source, stream_stem
from utils.errors import InputError


def check_half(half, device):
    if half and device.type != 'cuda':
        print(f'note: --half needs CUDA; running in FP32 on {device.type}')
        return False
    return bool(half)


def save_image(path, im):
    """cv2.imwrite, falling back to .jpg for suffixes OpenCV cannot write. Returns the path written."""
    try:
        if cv2.imwrite(str(path), im):
            return path
    except cv2.error:
        pass
    path = path.with_suffix('.jpg')
    cv2.imwrite(str(path), im)
    return path


class ResultWriter:
    """Writes a run's outputs under ``save_dir``: annotated images/videos, labels/*.txt and crops/."""

    def __init__(self, save_dir, save_img=True, save_txt=False, save_conf=False, save_crop=False, vid_stride=1):
        self.save_dir, self.save_img, self.save_txt = Path(save_dir), save_img, save_txt
        self.save_conf, self.save_crop, self.vid_stride = save_conf, save_crop, vid_stride
        self.video_path, self.video = None, None
        self.labels_written = 0
        self.unique_stem = UniqueStems()
        if save_txt:
            (self.save_dir / 'labels').mkdir(parents=True, exist_ok=True)

    def base_name(self, frame):
        """'bus' for bus.jpg or clip.mp4 (local or streamed), 'webcam0' for camera 0; 'bus_2' for a second bus.jpg
        from another folder."""
        stem = {'webcam': f'webcam{frame.path}', 'stream': stream_stem(frame.path)}.get(frame.kind)
        return self.unique_stem(frame.path, stem or Path(frame.path).stem)

    def stem(self, frame):
        """Per-picture file stem: 'bus', or 'clip_<frame>' for a video frame."""
        base = self.base_name(frame)
        return base if frame.frame is None else f'{base}_{frame.frame}'

    def write(self, frame, annotated, det, names):
        """Save everything asked for one image or frame; returns the annotated output's path (or None)."""
        if self.save_txt and len(det):
            path = self.save_dir / 'labels' / f'{self.stem(frame)}.txt'
            path.write_text('\n'.join(yolo_label_lines(det, frame.image.shape, self.save_conf)) + '\n')
            self.labels_written += 1
        if self.save_crop:
            for *xyxy, _, cls in det.tolist():
                folder = self.save_dir / 'crops' / str(names[int(cls)])
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(increment_path(folder / f'{self.stem(frame)}.jpg')), crop_box(frame.image, xyxy))
        if not self.save_img:
            return None
        if frame.kind == 'image':
            return save_image(self.save_dir / (self.base_name(frame) + Path(frame.path).suffix), annotated)
        return self.write_video_frame(frame, annotated)

    def write_video_frame(self, frame, annotated):
        path = self.save_dir / f'{self.base_name(frame)}.mp4'
        if path != self.video_path:
            self.close()
            fps = max((frame.fps or 30.0) / self.vid_stride, 1.0)  # keep the clip's real-time duration
            h, w = annotated.shape[:2]
            self.video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
            self.video_path = path
        self.video.write(annotated)
        return path

    def close(self):
        if self.video is not None:
            self.video.release()
        self.video_path, self.video = None, None


def progress_prefix(frame):
    """'image 1/2 /p/bus.jpg', 'video 1/1 (3/90) /p/clip.mp4', 'stream (3/?) rtsp://…' or 'webcam 0 (frame 3)'."""
    if frame.kind == 'image':
        return f'image {frame.index}/{frame.count} {frame.path}'
    if frame.kind == 'video':
        return f'video {frame.index}/{frame.count} ({frame.frame}/{frame.frames or "?"}) {frame.path}'
    if frame.kind == 'stream':
        return f'stream ({frame.frame}/{frame.frames or "?"}) {frame.path}'
    return f'webcam {frame.path} (frame {frame.frame})'


def run(weights, source, imgsz=640, conf_thres=0.25, iou_thres=0.45, max_det=1000, device='', save_txt=False,
        save_conf=False, save_crop=False, nosave=False, classes=None, agnostic_nms=False, project='runs/detect',
        name='exp', exist_ok=False, line_thickness=3, hide_labels=False, hide_conf=False, half=False,
        vid_stride=1, verbose=True, augment=False):
    """Detect objects in ``source`` and save results; see ``parse_opt`` for what each argument means.
    ``weights`` is one file or a list of them (an ensemble, joined before NMS).

    Returns one dict per image or video frame: ``path``, ``frame`` (None for images), ``shape`` (h, w) of the
    original, ``det`` (n, 6) float tensor [x1, y1, x2, y2, conf, cls] in original pixels, ``names`` and
    ``save_path`` (the annotated output, or None). Raises FileNotFoundError / ValueError with one-line messages.
    """
    log = print if verbose else (lambda *a, **k: None)
    if line_thickness is not None and line_thickness < 0:
        raise InputError(f'--line-thickness {line_thickness}: must be >= 0 (0 = automatic)')
    device = select_device(device)
    backend = load_models(weights, device, fp16=check_half(half, device), augment=augment)
    detector = Predictor(backend, imgsz, conf_thres, iou_thres, classes, agnostic_nms, max_det)
    frames = open_source(source, vid_stride)  # checked before any run folder is made
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    writer = ResultWriter(save_dir, not nosave, save_txt, save_conf, save_crop, vid_stride)
    names, results, skipped = detector.names, [], 0
    try:
        for frame in frames:
            if frame.image is None:
                skipped += 1
                log(f'{frame.kind} {frame.index}/{frame.count} skipped: {frame.error}')
                continue
            det, (h, w), ms = detector(frame.image)
            shown = annotate(frame.image, det, names, line_thickness or None, hide_labels, hide_conf)
            save_path = writer.write(frame, shown, det, names)
            log(f'{progress_prefix(frame)}: {h}x{w} {describe(det, names)}, {ms:.1f}ms')
            results.append({'path': frame.path, 'frame': frame.frame, 'shape': frame.image.shape[:2], 'det': det,
                            'names': names, 'save_path': save_path})
    finally:
        writer.close()
    if not results and skipped:
        raise InputError(f'{source}: none of its {skipped} file(s) could be read')
    report(log, detector, len(results), skipped, writer)
    return results


def report(log, detector, n, skipped, writer):
    """Average time per stage, skipped files, and where the results are."""
    t = {k: v / max(n, 1) for k, v in detector.clock.total.items()}
    log(f"Speed: {t.get('pre-process', 0):.1f}ms pre-process, {t.get('inference', 0):.1f}ms inference, "
        f"{t.get('NMS', 0):.1f}ms NMS per image at shape (1, 3, {detector.imgsz[0]}, {detector.imgsz[1]})")
    if skipped:
        log(f'{skipped} unreadable file(s) skipped')
    labels = f', {writer.labels_written} label file(s) in {writer.save_dir / "labels"}' if writer.save_txt else ''
    log(f'Results saved to {writer.save_dir}{labels}')


def parse_opt(argv=None):
    p = ArgumentParser(description='YOLOv5 inference on images, folders, globs, lists, videos, webcams, streams.')
    p.add_argument('--weights', nargs='+', required=True,
                   help='.pt checkpoint, .torchscript, .onnx, .tflite or OpenVINO folder; several: an ensemble')
    p.add_argument('--source', required=True,
                   help='image, folder, glob, .txt list of paths, video, webcam index, or rtsp:// / http(s):// stream')
    p.add_argument('--imgsz', '--img', '--img-size', nargs='+', type=int, default=[640], help='inference size h,w')
    p.add_argument('--conf-thres', type=float, default=0.25, help='confidence threshold')
    p.add_argument('--iou-thres', type=float, default=0.45, help='NMS IoU threshold')
    p.add_argument('--max-det', type=int, default=1000, help='maximum detections per image')
    p.add_argument('--device', default='', help="cuda device, i.e. 0 or 0,1 or cpu ('' = CUDA 0 if available)")
    p.add_argument('--save-txt', action='store_true', help='save results to labels/*.txt')
    p.add_argument('--save-conf', action='store_true', help='add confidences to --save-txt labels')
    p.add_argument('--save-crop', action='store_true', help='save cropped boxes to crops/<class>/')
    p.add_argument('--nosave', action='store_true', help='do not save annotated images/videos')
    p.add_argument('--classes', nargs='+', type=int, help='keep only these class ids: --classes 0, or 0 2 3')
    p.add_argument('--agnostic-nms', action='store_true', help='class-agnostic NMS')
    p.add_argument('--project', default='runs/detect', help='save results to project/name')
    p.add_argument('--name', default='exp', help='save results to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    p.add_argument('--line-thickness', type=int, default=3, help='bounding box thickness in pixels (0 = auto)')
    p.add_argument('--hide-labels', action='store_true', help='hide labels')
    p.add_argument('--hide-conf', action='store_true', help='hide confidences')
    p.add_argument('--half', action='store_true', help='FP16 half-precision inference (CUDA only)')
    p.add_argument('--vid-stride', type=int, default=1, help='video frame-rate stride')
    p.add_argument('--augment', action='store_true', help='test-time augmentation (3 scales, a flip)')
    return p.parse_args(argv)


def main(argv=None):
    opt = parse_opt(argv)
    keep_freed_memory()  # no page faults between forwards: faster on CPU (utils/runs.py)
    run_cli(run, opt)


if __name__ == '__main__':
    main()
