"""One HTTP(S) download with a progress bar, shared by the weights and the data-set downloads.

    fetch(url, dest)                  # dest.part while it runs, renamed to dest when complete
    fetch(url, dest, resume=True)     # a dest.part left by a broken download is continued (HTTP Range)

With ``resume=True`` a partial ``dest.part`` survives a failure and the next call asks the server for the rest
(``Range: bytes=N-``); a server that ignores the Range (answers 200, not 206) or cannot satisfy it (416) is
downloaded afresh. Without it, a failure leaves nothing behind. Failures raise OSError (URLError, HTTPError,
timeouts, a connection closed early) or ValueError (a URL urllib cannot open); the caller turns them into its
one-line message. Nothing here touches the network until called, and no state outlives a call.
"""
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

USER_AGENT = 'yolov5-freeze'
CONTENT_RANGE = re.compile(r'bytes\s+(\d+)-\d+/(\d+|\*)')


def partial_path(dest):
    """Where ``fetch`` keeps ``dest`` while it is incomplete."""
    dest = Path(dest)
    return dest.with_name(dest.name + '.part')


def fetch(url, dest, *, resume=False, timeout=30, chunk=1 << 20):
    """Download ``url`` to ``dest`` (atomically: through ``dest.part``) with a progress bar on stderr."""
    dest = Path(dest)
    part = partial_path(dest)
    if not resume:
        part.unlink(missing_ok=True)
    start = part.stat().st_size if part.is_file() else 0
    try:
        done = _download(url, dest, part, start, timeout, chunk)
        if done == 0:
            raise OSError('empty response')
        os.replace(part, dest)
    except BaseException:
        if not resume or (part.is_file() and part.stat().st_size == 0):
            part.unlink(missing_ok=True)
        raise
    return dest


def _download(url, dest, part, start, timeout, chunk):
    """Write the body of ``url`` to ``part`` (appending from byte ``start`` when the server honours a Range);
    the number of bytes ``part`` holds at the end."""
    headers = {'User-Agent': USER_AGENT}
    if start:
        headers['Range'] = f'bytes={start}-'
    try:
        try:
            r = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and start:  # the partial file is not a prefix of what the server has now
                e.close()
                part.unlink(missing_ok=True)
                return _download(url, dest, part, 0, timeout, chunk)
            raise
        with r:
            if start and not (getattr(r, 'status', None) == 206 and _range_start(r.headers) == start):
                print(f'{url}: the server ignored the request to resume at byte {start:,}; downloading it afresh',
                      file=sys.stderr)
                start = 0
            length = _content_length(r.headers)
            total = start + length if length is not None else None
            verb = f'Resuming at {start / 1e6:.1f} MB' if start else 'Downloading'
            print(f'{verb} {url} -> {dest}', file=sys.stderr)
            done = start
            with open(part, 'ab' if start else 'wb') as f, \
                    tqdm(total=total, initial=start, unit='B', unit_scale=True, unit_divisor=1024,
                         desc=dest.name, file=sys.stderr, mininterval=0.5) as bar:
                while block := r.read(chunk):
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
    except http.client.HTTPException as e:  # IncompleteRead, BadStatusLine ...: not OSErrors
        raise ConnectionError(f'broken HTTP response ({type(e).__name__})') from None
    if total is not None and done < total:
        raise ConnectionError(f'connection closed after {done:,} of {total:,} bytes')
    return done


def _range_start(headers):
    m = CONTENT_RANGE.fullmatch((headers.get('Content-Range') or '').strip())
    return int(m.group(1)) if m else None


def _content_length(headers):
    value = (headers.get('Content-Length') or '').strip()
    return int(value) if value.isdigit() else None
