"""A data YAML's ``download:`` section: the archives that make up a data set, fetched and unpacked on first use.

    download:
      - url: http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar
        size: 451020800                       # bytes; `size: unknown` where no public source gives it
        md5: b6e924de25625d8de591ea690078ad9f # or sha256: <64 hex>; without either the archive is unverified
        dest: .                               # folder under the YAML's path: root (default .)
        strip: 0                              # leading folder levels dropped from every member (default 0)

``parse_download`` checks the section (one-line ValueError naming the YAML). ``ensure_dataset`` runs when a
train/val source is missing (or an earlier unpack was cut short): for each archive not yet unpacked it downloads
(resuming a partial file), verifies size and checksum, unpacks into a temporary folder and only then moves the
files into place. The work happens in ``<root>.download/`` beside the data set root:

    <name>.part       a partial download, resumed next time (HTTP Range)
    <name>            the complete archive; deleted once unpacked
    <name>.corrupt    an archive refused (size, checksum, unreadable, unsafe member): kept aside, never unpacked
    <name>.unpack/    the temporary folder it is unpacked into
    <name>.merging    set while its files move into place: a run that finds one redoes that archive
    <name>.done       unpacked; the whole folder is removed once every source of the YAML exists

Members with absolute paths, ``..`` or links that point outside are refused, as are device files
(:mod:`utils.data.archives` unpacks).
"""
import hashlib
import os
import posixpath
import re
import shutil
import sys
import urllib.error
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from utils.errors import InputError, one_line
from utils.fetch import fetch, partial_path

KEYS = ('url', 'size', 'md5', 'sha256', 'dest', 'strip')
DIGESTS = {'md5': 32, 'sha256': 64}  # hex digits
TAR_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.bz2', '.tbz2', '.tar.xz', '.txz')
SPEC = 'url, size, md5 or sha256, dest'


@dataclass(frozen=True)
class Archive:
    url: str
    name: str  # the file name, from the URL
    kind: str  # 'zip' or 'tar'
    size: int  # bytes, or None ('size: unknown')
    md5: str
    sha256: str
    dest: Path  # absolute, inside the data set root
    strip: int


# ---------------------------------------------------------------- the YAML section
def parse_download(spec, root, where):
    """The archives of a ``download:`` section (a list of mappings, or one mapping); [] when there is none.

    A string is upstream YOLOv5's form (a URL or a script to run): it is never run here, see ``upstream_note``.
    """
    if spec is None or isinstance(spec, str):
        return []
    items = [spec] if isinstance(spec, dict) else spec
    if not isinstance(items, list) or not items:
        raise InputError(f'{where}: download must be a list of archives, each with {SPEC}; got {_show(spec)}')
    if not Path(root).name:
        raise InputError(f'{where}: download needs a path: below the file-system root, got {root}')
    archives = [_archive(item, i, Path(root), where) for i, item in enumerate(items)]
    names = [a.name for a in archives]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise InputError(f'{where}: download lists two archives named {dup}')
    return archives


def upstream_note(spec):
    """What to add to a 'not found' line when ``download:`` is upstream's string form."""
    if isinstance(spec, str):
        return (" (its download: is upstream YOLOv5's script or URL, which is never run here: fetch the data "
                f"yourself, or list the archives as data/voc.yaml does, each with {SPEC})")
    return ''


def _show(v):
    return f'{type(v).__name__} {v!r:.60}'


def _archive(item, i, root, where):
    at = f'{where}: download[{i}]'
    if not isinstance(item, dict):
        raise InputError(f'{at} must be a mapping with {SPEC}; got {_show(item)}')
    unknown = [str(k) for k in item if k not in KEYS]
    if unknown:
        raise InputError(f"{at}: unknown key '{unknown[0]:.40}' (an archive takes {', '.join(KEYS)})")
    url = item.get('url')
    if not isinstance(url, str) or not url.strip():
        raise InputError(f'{at}: needs a url, got {_show(url)}')
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname
    except ValueError:  # e.g. a malformed IPv6 host or port
        parts, host = None, None
    if parts is None or parts.scheme.lower() not in ('http', 'https') or not host:
        raise InputError(f"{at}: url '{url:.120}' must be an http:// or https:// address with a host")
    name = posixpath.basename(urllib.parse.unquote(parts.path))
    kind = 'zip' if name.lower().endswith('.zip') else 'tar' if name.lower().endswith(TAR_SUFFIXES) else None
    if not kind or name.startswith('.'):
        raise InputError(f"{at}: url '{url:.120}' must name a .zip or .tar (.tar.gz, .tgz, .tar.bz2, .tar.xz) "
                         f"file, got '{name:.60}'")
    at = f'{where}: download[{i}] ({name})'
    if 'size' not in item:
        raise InputError(f'{at}: missing size (the archive in bytes; size: unknown where no source gives it)')
    size = item['size']
    if size == 'unknown':
        size = None
    elif type(size) is not int or size < 1:
        raise InputError(f'{at}: size must be a positive number of bytes or unknown, got {_show(size)}')
    digests = {}
    for algo, n in DIGESTS.items():
        value = item.get(algo)
        if value is None:
            continue
        if not isinstance(value, str) or not re.fullmatch(f'[0-9a-fA-F]{{{n}}}', value.strip()):
            raise InputError(f'{at}: {algo} must be {n} hex digits, got {_show(value)}')
        digests[algo] = value.strip().lower()
    dest_text = item.get('dest', '.')
    if not isinstance(dest_text, str) or not dest_text.strip():
        raise InputError(f'{at}: dest must be a folder under the data set root, got {_show(dest_text)}')
    if Path(dest_text).is_absolute() or dest_text.startswith(('/', '\\')):
        raise InputError(f"{at}: dest '{dest_text:.80}' must be relative to the data set root {root}")
    dest = (root / dest_text).resolve()
    if dest != root.resolve() and root.resolve() not in dest.parents:
        raise InputError(f"{at}: dest '{dest_text:.80}' escapes the data set root {root}")
    strip = item.get('strip', 0)
    if type(strip) is not int or strip < 0:
        raise InputError(f'{at}: strip must be a number of folder levels (0 or more), got {_show(strip)}')
    return Archive(url.strip(), name, kind, size, digests.get('md5'), digests.get('sha256'), dest, strip)


# ---------------------------------------------------------------- first use
def staging_dir(root):
    """The work folder of a data set's downloads: ``<root>.download`` beside the root."""
    root = Path(root)
    return root.parent / f'{root.name}.download'


def incomplete(sources, root):
    """True while a source is missing or an unpack was cut short (a ``.merging`` marker remains)."""
    staging = staging_dir(root)
    return any(not Path(s).exists() for s in sources) or (staging.is_dir() and any(staging.glob('*.merging')))


def ensure_dataset(archives, root, where, sources):
    """Download and unpack the archives not yet unpacked when the data set is incomplete; True if it did.

    Failures are one line: FileNotFoundError (download failed: the URL, the reason, where to put the file by
    hand), ValueError (an archive refused and kept aside), OSError (unpacking or moving files failed).
    """
    root = Path(root)
    if not archives or not incomplete(sources, root):
        return False
    staging = staging_dir(root)
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f'{where}: cannot create {staging} for the download ({one_line(e)})') from None
    with _locked(staging):
        if not incomplete(sources, root):  # another process finished it while this one waited
            _tidy(staging)
            return False
        missing = next((s for s in sources if not Path(s).exists()), None)
        todo = [a for a in archives if not (staging / f'{a.name}.done').exists()]
        sizes = [a.size for a in todo]
        total = f', {sum(sizes) / 1e9:.2f} GB' if todo and None not in sizes else ''
        why = f'{missing} not found' if missing else 'an earlier unpack was cut short'
        print(f'{where}: {why}; fetching {len(todo)} of {len(archives)} archives{total} into {staging}')
        for a in todo:
            _unpack(a, _obtain(a, staging, where), staging, where)
        still = [s for s in sources if not Path(s).exists()]
        if still:
            raise FileNotFoundError(f'{where}: {still[0]} not found after unpacking every download: archive (check '
                                    f'their dest and strip); {staging} records what was unpacked, delete it to '
                                    f'download again')
    shutil.rmtree(staging, ignore_errors=True)
    print(f'{where}: data set ready in {root}')
    return True


@contextmanager
def _locked(staging):
    """One process at a time per data set (DDP ranks, two runs): the others wait, then find the work done."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(staging / '.lock', 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f'{staging}: another process is downloading this data set, waiting for it')
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tidy(staging):
    """Remove a work folder that holds nothing but the lock file."""
    if staging.is_dir() and {p.name for p in staging.iterdir()} <= {'.lock'}:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- download and verify
def _obtain(a, staging, where):
    """The verified archive file in ``staging``: one already there (a finished download, or put by hand), else
    downloaded, continuing a partial one."""
    path = staging / a.name
    part = partial_path(path)
    if not path.is_file() and a.size is not None and part.is_file() and part.stat().st_size >= a.size:
        if part.stat().st_size == a.size:
            os.replace(part, path)  # complete: only the rename was missed
        else:
            part.unlink()  # longer than the archive: not a prefix of it
    if not path.is_file():
        try:
            fetch(a.url, path, resume=True)
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, a connection closed early
            kept = (f'; the {part.stat().st_size:,} bytes so far are kept in {part.name} and resumed next time'
                    if part.is_file() else '')
            raise FileNotFoundError(f'{where}: downloading {a.url} failed ({_reason(e)}){kept}; to install it by '
                                    f'hand, put the file at {path} (checked and unpacked on the next run) or unpack '
                                    f'it into {a.dest}{_strip_note(a)}') from None
    _verify(a, path, where)
    return path


def _reason(e):
    if isinstance(e, urllib.error.HTTPError):
        return f'HTTP {e.code} {e.reason}'
    if isinstance(e, urllib.error.URLError):
        return one_line(e.reason) if isinstance(e.reason, BaseException) else str(e.reason)
    return one_line(e)[:200]


def _strip_note(a):
    return f' without its top {a.strip} folder level{"s" if a.strip > 1 else ""}' if a.strip else ''


def _verify(a, path, where):
    """Size and checksum against the YAML; an archive that fails is moved aside and refused (ValueError)."""
    size = path.stat().st_size
    if a.size is not None and size != a.size:
        _refuse(a, path, where, f'{size:,} bytes, expected {a.size:,}')
    for algo in DIGESTS:
        want = getattr(a, algo)
        if want:
            got = _digest(path, algo, size)
            if got != want:
                _refuse(a, path, where, f'{algo} {got}, expected {want}')
    if not (a.md5 or a.sha256):
        checked = 'its size only' if a.size is not None else 'nothing, not even its size'
        print(f'{a.name}: unverified archive ({where} gives no md5 or sha256 for it; checked: {checked})')


def _digest(path, algo, size):
    h = hashlib.new(algo, usedforsecurity=False)
    with open(path, 'rb') as f, tqdm(total=size, unit='B', unit_scale=True, unit_divisor=1024, file=sys.stderr,
                                     desc=f'{algo} {path.name}', disable=size < 1 << 26, mininterval=0.5) as bar:
        while block := f.read(1 << 22):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _refuse(a, path, where, why):
    aside = path.with_name(path.name + '.corrupt')
    os.replace(path, aside)
    raise InputError(f'{where}: {path.name} from {a.url} refused: {why}; nothing was unpacked, the file is kept '
                     f'aside as {aside} (delete it to download again, or put a good copy at {path})')


# ---------------------------------------------------------------- unpack, then move into place
def _unpack(a, path, staging, where):
    """Unpack into ``<name>.unpack/``, then move the files into ``a.dest`` under a ``.merging`` marker, so a run
    that stops half-way leaves either nothing in place or a marker that makes the next run redo it."""
    from utils.data.archives import UNREADABLE, Refused, extract_tar, extract_zip, merge_tree  # first use only
    tmp = staging / f'{a.name}.unpack'
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run that stopped mid-unpack
    tmp.mkdir()
    try:
        n = (extract_zip if a.kind == 'zip' else extract_tar)(path, tmp, a.strip)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Refused):
            _refuse(a, path, where, f'unsafe archive, {e}')
        if isinstance(e, UNREADABLE):
            _refuse(a, path, where, f'unreadable {a.kind} archive ({one_line(e)[:160]})')
        if isinstance(e, OSError):
            raise OSError(f'{where}: unpacking {path.name} failed ({one_line(e)[:200]}); nothing was moved into '
                          f'place, the next run unpacks it again') from None
        raise
    if n == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        _refuse(a, path, where, f'nothing to unpack{" after strip: " + str(a.strip) if a.strip else ""}')
    marker = staging / f'{a.name}.merging'
    marker.touch()
    try:
        merge_tree(tmp, a.dest)
    except OSError as e:
        raise OSError(f'{where}: moving the files of {path.name} into {a.dest} failed ({one_line(e)[:200]}); the '
                      f'next run unpacks it again') from None
    os.replace(marker, staging / f'{a.name}.done')
    shutil.rmtree(tmp, ignore_errors=True)
    path.unlink()
    print(f'{a.name}: unpacked into {a.dest}')
