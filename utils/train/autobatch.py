"""--batch-size -1 (AutoBatch): the largest batch whose training step fits a fraction of the free CUDA memory.

    batch = autobatch(model, imgsz, device, fraction=0.8, log=print)

It measures the peak memory of a forward + backward pass at a few batch sizes, fits memory = a * batch + b, and
solves for ``fraction`` of the memory that was free before measuring. CUDA only: on a CPU it refuses in one line.
"""
import numpy as np
import torch
from utils.errors import InputError

PROBE_SIZES = (1, 2, 4, 8, 16)
NEEDS_CUDA = '--batch-size -1 (AutoBatch) needs a CUDA device; give a batch size on CPU, e.g. --batch-size 16'


BATCH_LIMIT = 1024  # the largest batch AutoBatch picks (a small model on a large GPU would fit more)


def fit_batch_size(sizes, peaks, budget, limit=BATCH_LIMIT):
    """The largest batch with a * batch + b <= budget, from (batch, peak bytes) measurements (at least two, with
    memory growing with the batch); None when they cannot be fitted.

    Memory that grows by less than one byte per image does not grow: a least-squares fit of equal peaks returns
    a rounding-error slope (1e-14 with numpy 2.4), which would otherwise read as "any batch fits"."""
    if len(sizes) < 2:
        return None
    a, b = np.polyfit(np.asarray(sizes, float), np.asarray(peaks, float), 1)
    if not a >= 1.0:
        return None
    return int(min(max((budget - b) // a, 1), limit))


def measure_peak(model, imgsz, batch, device, amp=True):
    """Peak CUDA bytes allocated beyond what was held before, for one training forward + backward pass."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    imgs = torch.rand(batch, 3, imgsz, imgsz, device=device)
    with torch.autocast(device_type='cuda', enabled=amp):
        out = model(imgs)
    sum(o.float().sum() for o in out).backward()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del imgs, out
    model.zero_grad(set_to_none=True)
    return peak


def autobatch(model, imgsz, device, fraction=0.8, log=print, sizes=PROBE_SIZES):
    """Batch size for ``model`` at ``imgsz`` on ``device`` (CUDA) using ``fraction`` of its free memory."""
    if device.type != 'cuda':
        raise InputError(NEEDS_CUDA)
    free, total = torch.cuda.mem_get_info(device)
    was_training = model.training
    model.train()
    measured, peaks = [], []
    for b in sizes:
        try:
            peaks.append(measure_peak(model, imgsz, b, device))
            measured.append(b)
        except torch.cuda.OutOfMemoryError:
            break
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    torch.cuda.empty_cache()
    batch = fit_batch_size(measured, peaks, fraction * free)
    if batch is None:
        batch = measured[-1] if measured else 1
        log(f'AutoBatch: could not fit memory to batch size; using batch {batch}')
        return batch
    a, b = np.polyfit(measured, peaks, 1)
    capped = f' ({BATCH_LIMIT}: the most AutoBatch picks)' if batch == BATCH_LIMIT else ''
    log(f'AutoBatch: batch {batch}{capped} for {imgsz} px uses ~{(a * batch + b) / free:.0%} of the '
        f'{free / 2 ** 30:.1f} GiB free ({total / 2 ** 30:.1f} GiB total)')
    return batch
