"""Unpacking archives safely: every member checked before anything is written, nothing written outside.

    n = extract_tar(path, folder, strip)   # or extract_zip; raises Refused for an unsafe member
    merge_tree(folder, dest)               # move the unpacked tree into place (renames where it can)

Members with absolute paths, ``..`` or links that point outside are refused, as are device files and FIFOs;
``strip`` drops that many leading folders from every member. Used by :mod:`utils.data.download`.
"""
import errno
import gzip
import lzma
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

UNREADABLE = (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, gzip.BadGzipFile, EOFError,
              NotImplementedError)  # a truncated or garbled archive, an unsupported zip compression


class Refused(Exception):
    """An archive member that would be unsafe to unpack (the message says which and why)."""


def _member_path(name, strip):
    """A member's path relative to the unpack folder (None: nothing left after ``strip``); Refused if absolute
    or climbing out with '..'."""
    posix = name.replace('\\', '/')
    if posix.startswith('/') or re.match(r'[A-Za-z]:', posix):
        raise Refused(f"member '{name:.120}' has an absolute path")
    parts = [p for p in posix.split('/') if p not in ('', '.')]
    if '..' in parts:
        raise Refused(f"member '{name:.120}' climbs out with '..'")
    parts = parts[strip:]
    return '/'.join(parts) if parts else None


def _check_link(rel, linkname, name):
    link = linkname.replace('\\', '/')
    if link.startswith('/') or re.match(r'[A-Za-z]:', link):
        raise Refused(f"link '{name:.120}' points to the absolute path '{linkname:.120}'")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
    if resolved == '..' or resolved.startswith('../'):
        raise Refused(f"link '{name:.120}' -> '{linkname:.120}' points outside the archive")


def _inside(path, top):
    path = os.path.realpath(path)
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _prepare(tmp_real, target, name):
    """Make ``target``'s folder (inside the unpack folder, links on disk followed) and clear its place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not _inside(target.parent, tmp_real):
        raise Refused(f"member '{name:.120}' would be written outside through a link")
    if target.is_symlink() or target.is_file():
        target.unlink()  # never write through a link an earlier member made


def _make_link(tmp_real, target, linkname, name):
    _prepare(tmp_real, target, name)
    if not _inside(os.path.join(target.parent, linkname), tmp_real):
        raise Refused(f"link '{name:.120}' -> '{linkname:.120}' points outside the archive")
    os.symlink(linkname, target)


def _write_member(src, target):
    """One regular file's bytes (tests replace this to fail mid-unpack)."""
    with open(target, 'wb') as f:
        shutil.copyfileobj(src, f, 1 << 20)


def _bar(items, path):
    return tqdm(items, desc=f'Unpacking {path.name}', unit=' files', file=sys.stderr, mininterval=0.5,
                disable=len(items) < 1000)


def extract_tar(path, tmp, strip):
    """Every member checked first (nothing is written if one is refused), then written; the file count."""
    tmp_real = os.path.realpath(tmp)
    with tarfile.open(path, 'r:*') as tf:
        plan = []
        for m in tf.getmembers():
            rel = _member_path(m.name, strip)
            if rel is None:
                continue
            if m.issym():
                _check_link(rel, m.linkname, m.name)
            elif m.islnk():
                if _member_path(m.linkname, strip) is None:
                    raise Refused(f"hard link '{m.name:.120}' -> '{m.linkname:.120}' names no member")
            elif not (m.isfile() or m.isdir()):
                raise Refused(f"member '{m.name:.120}' is a device, FIFO or other special file")
            plan.append((m, rel))
        for m, rel in _bar(plan, path):
            target = tmp / rel
            if m.isdir():
                _prepare(tmp_real, target, m.name)
                target.mkdir(exist_ok=True)
            elif m.issym():
                _make_link(tmp_real, target, m.linkname, m.name)
            elif m.islnk():
                src = tmp / _member_path(m.linkname, strip)
                _prepare(tmp_real, target, m.name)
                if not src.is_file() or not _inside(src, tmp_real):
                    raise Refused(f"hard link '{m.name:.120}' -> '{m.linkname:.120}' names no file before it")
                shutil.copyfile(src, target)
            else:
                _prepare(tmp_real, target, m.name)
                with tf.extractfile(m) as src:
                    _write_member(src, target)
    return len(plan)


def extract_zip(path, tmp, strip):
    """As ``extract_tar``, for zip files (whose Unix symlinks are checked and made as links)."""
    tmp_real = os.path.realpath(tmp)
    with zipfile.ZipFile(path) as zf:
        plan = []
        for info in zf.infolist():
            rel = _member_path(info.filename, strip)
            if rel is None:
                continue
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                raise Refused(f"member '{info.filename:.120}' is a device, FIFO or other special file")
            plan.append((info, rel, kind == stat.S_IFLNK))
        for info, rel, is_link in _bar(plan, path):
            target = tmp / rel
            if info.is_dir():
                _prepare(tmp_real, target, info.filename)
                target.mkdir(exist_ok=True)
            elif is_link:
                linkname = zf.read(info).decode('utf-8', 'replace')
                _check_link(rel, linkname, info.filename)
                _make_link(tmp_real, target, linkname, info.filename)
            else:
                _prepare(tmp_real, target, info.filename)
                with zf.open(info) as src:
                    _write_member(src, target)
    return len(plan)


def merge_tree(src, dest):
    """Move the tree ``src`` into ``dest``: a folder that is new is renamed in one step, one that exists already
    (VOC2007 trainval and test share VOCdevkit/VOC2007) is merged file by file, files replace files."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        target = dest / entry.name
        if entry.is_dir(follow_symlinks=False) and target.is_dir():
            merge_tree(Path(entry.path), target)
            continue
        if target.is_dir() and not target.is_symlink():
            raise OSError(f'{target} is a folder where the archive has a file')
        _move(entry.path, target)


def _move(src, dst):
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.move(src, dst)  # the data set root is on another file system than its work folder
