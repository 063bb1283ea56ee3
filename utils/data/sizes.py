"""Network input sizes: the --imgsz check shared by train, val, detect and export, and the size a loaded image is
resized to."""
from utils.errors import InputError


def check_imgsz(imgsz, stride):
    """--imgsz as (h, w), each rounded up to a multiple of the model stride (with a note when changed)."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if len(sizes) not in (1, 2) or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise InputError(f'--imgsz {imgsz}: expected one or two positive integers (size, or height width)')
    sizes = sizes * 2 if len(sizes) == 1 else sizes
    fixed = [-(-s // stride) * stride for s in sizes]
    if fixed != sizes:
        print(f'note: --imgsz {sizes} is not a multiple of the model stride {stride}, using {fixed}')
    return tuple(fixed)


def long_side_to(h, w, size):
    """(h, w) of an h x w image resized so its long side is ``size`` (each side at least 1), as the loader does."""
    r = size / max(h, w)
    return max(1, round(h * r)), max(1, round(w * r))
