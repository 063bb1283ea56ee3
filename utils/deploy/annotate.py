"""Drawing detections on images (boxes, class names, confidences) and cutting them out as crops.

Colours come from a fixed palette indexed by class id, so a class keeps its colour across images and runs;
label text is black or white, whichever contrasts more with the label's background (WCAG contrast ratio).
Images are OpenCV BGR uint8 arrays; functions that draw return a new array and leave the input untouched.
"""
import cv2
import numpy as np

# 20 well-separated colours (RGB hex), after Sasha Trubetskoy's "List of 20 Simple, Distinct Colors".
PALETTE_HEX = ('E6194B', '3CB44B', 'FFE119', '4363D8', 'F58231', '911EB4', '42D4F4', 'F032E6', 'BFEF45',
               'FABED4', '469990', 'DCBEFF', '9A6324', 'FFFAC8', '800000', 'AAFFC3', '808000', 'FFD8B1',
               '000075', 'A9A9A9')
FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK, WHITE = (0, 0, 0), (255, 255, 255)


def class_colour(cls):
    """BGR colour of class id ``cls`` (the palette repeats after 20 classes)."""
    h = PALETTE_HEX[int(cls) % len(PALETTE_HEX)]
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return b, g, r


def relative_luminance(bgr):
    """WCAG 2 relative luminance of an sRGB colour given as BGR 0-255, in [0, 1]."""
    def linear(c):
        c = c / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    b, g, r = (linear(c) for c in bgr)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(bgr1, bgr2):
    l1, l2 = sorted((relative_luminance(bgr1), relative_luminance(bgr2)), reverse=True)
    return (l1 + 0.05) / (l2 + 0.05)


def text_colour(background):
    """Black or white, whichever reads better on ``background`` (BGR)."""
    return BLACK if contrast_ratio(background, BLACK) >= contrast_ratio(background, WHITE) else WHITE


def default_line_width(shape):
    """Box line width growing with the image size: ~0.3% of the mean side, at least 2 px."""
    return max(round((shape[0] + shape[1]) / 2 * 0.003), 2)


def box_label(name, conf, hide_labels=False, hide_conf=False):
    """Text drawn above a box: 'person 0.87', 'person', '0.87' or None."""
    if hide_labels:
        return None
    return name if hide_conf else f'{name} {conf:.2f}'


def draw_box(im, xyxy, colour, label=None, line_width=2):
    """Draw one box (in place) and, if given, its label on a filled tab above it (inside when at the top)."""
    p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(im, p1, p2, colour, thickness=line_width, lineType=cv2.LINE_AA)
    if not label:
        return im
    scale, thickness = line_width / 3, max(line_width - 1, 1)
    (w, h), baseline = cv2.getTextSize(label, FONT, scale, thickness)
    outside = p1[1] - h - baseline - 3 >= 0  # room above the box for the tab
    top = p1[1] - h - baseline - 3 if outside else p1[1]
    left = max(min(p1[0], im.shape[1] - w - 2), 0)  # keep the tab inside the image at the right edge
    cv2.rectangle(im, (left, top), (left + w + 2, top + h + baseline + 3), colour, -1, cv2.LINE_AA)
    cv2.putText(im, label, (left + 1, top + h + 1), FONT, scale, text_colour(colour), thickness, cv2.LINE_AA)
    return im


def annotate(im, det, names, line_width=None, hide_labels=False, hide_conf=False):
    """Copy of ``im`` with every detection row [x1, y1, x2, y2, conf, cls] drawn on it.

    ``names`` maps class ids to names (list or dict). Lower-confidence boxes are drawn first, so the most
    confident ones stay on top.
    """
    out = np.ascontiguousarray(im).copy()
    lw = line_width or default_line_width(im.shape)
    rows = sorted((list(map(float, r)) for r in det), key=lambda r: r[4])
    for *xyxy, conf, cls in rows:
        label = box_label(names[int(cls)], conf, hide_labels, hide_conf)
        draw_box(out, xyxy, class_colour(cls), label, lw)
    return out


def crop_box(im, xyxy, gain=1.02, pad=10):
    """The region of ``im`` under a box, enlarged by ``gain`` and ``pad`` pixels and clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in xyxy[:4])
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * gain + pad, (y2 - y1) * gain + pad
    ih, iw = im.shape[:2]
    left, right = int(np.clip(cx - w / 2, 0, iw)), int(np.clip(cx + w / 2, 0, iw))
    top, bottom = int(np.clip(cy - h / 2, 0, ih)), int(np.clip(cy + h / 2, 0, ih))
    return np.ascontiguousarray(im[top:bottom, left:right])
