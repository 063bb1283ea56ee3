"""Data sets downloaded on first use (utils/data/download.py over utils/fetch.py), against an HTTP server on
127.0.0.1 that this file starts: resume, refusals, atomic unpack, one-line errors; and data YAML names."""
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from utils.data import archives, download
from utils.data.config import check_dataset, find_data_yaml
from utils.fetch import fetch

ROOT = Path(__file__).resolve().parents[1]
VAL = 'VOCdevkit/VOC2007/ImageSets/Main/test.txt'
FILES = {VAL: b'000001\n000002\n',
         'VOCdevkit/VOC2007/JPEGImages/000001.jpg': os.urandom(20000),  # large enough to cut a tar inside it
         'VOCdevkit/VOC2007/Annotations/000001.xml': b'<annotation></annotation>\n'}


class Server:
    """Serves ``files`` ({name: bytes}); honours Range (206) and records (name, Range header) of each request.
    ``faults[name]`` spoils the next request for it: an HTTP status, 'cut' (the connection closes half-way
    through the body) or 'ignore-range' (200 with the whole file)."""

    def __init__(self):
        self.files, self.requests, self.faults = {}, [], {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.0'  # one request per connection

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.answer(self)

        self.httpd = HTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f'http://127.0.0.1:{self.httpd.server_port}/{name}'

    def answer(self, h):
        name, rng = h.path.lstrip('/'), h.headers.get('Range')
        self.requests.append((name, rng))
        fault = self.faults.pop(name, None)
        body = self.files.get(name)
        if isinstance(fault, int) or body is None:
            h.send_error(fault if isinstance(fault, int) else 404)
            return
        start = int(rng.split('=')[1].split('-')[0]) if rng and fault != 'ignore-range' else 0
        h.send_response(206 if start else 200)
        if start:
            h.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        h.send_header('Content-Length', str(len(body) - start))
        h.end_headers()
        data = body[start:]
        h.wfile.write(data[:len(data) // 2] if fault == 'cut' else data)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def make_tar(files, mode='w'):
    """A tar of ``files``: {name: bytes, or ('symlink', target)}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def archive(server, name, body, checksum='md5', **extra):
    """Serve ``body`` as ``name``; its download: entry (size and the checksum of what is served)."""
    server.files[name] = body
    entry = {'url': server.url(name), 'size': len(body), **extra}
    if checksum:
        entry[checksum] = hashlib.new(checksum, body).hexdigest()
    return entry


def data_yaml(tmp_path, entries, val=VAL):
    f = tmp_path / 'data.yaml'
    f.write_text(yaml.safe_dump({'path': 'ds', 'train': val, 'val': val, 'nc': 1, 'names': ['thing'],
                                 'download': entries}))
    return f


def one_line_error(exc_type, fn, *args):
    with pytest.raises(exc_type) as e:
        fn(*args)
    msg = str(e.value)
    assert '\n' not in msg and 'data.yaml' in msg, msg
    return msg


def staging(tmp_path):
    return tmp_path / 'ds.download'


# ---------------------------------------------------------------- normal downloads
@pytest.mark.parametrize('kind', ['tar+md5', 'zip+sha256', 'tgz-unverified'])
def test_download_unpacks_then_check_dataset_succeeds(tmp_path, server, capsys, kind):
    if kind == 'tar+md5':
        entry = archive(server, 'voc.tar', make_tar(FILES))
    elif kind == 'zip+sha256':
        entry = archive(server, 'voc.zip', make_zip(FILES), checksum='sha256')
    else:
        entry = archive(server, 'voc.tgz', make_tar(FILES, 'w:gz'), checksum=None)
    d = check_dataset(data_yaml(tmp_path, [entry]))
    root = tmp_path / 'ds'
    assert d['val'] == [str(root / VAL)] and d['format'] == 'voc'
    for name, data in FILES.items():
        assert (root / name).read_bytes() == data
    assert not staging(tmp_path).exists()  # archive, markers and work folder gone once the data set is complete
    out = capsys.readouterr()
    assert ('unverified archive' in out.out) == (kind == 'tgz-unverified')
    assert 'Downloading' in out.err
    check_dataset(data_yaml(tmp_path, [entry]))
    assert len(server.requests) == 1  # on disk now: no second download


def test_archives_merge_into_shared_folders_with_dest_and_strip(tmp_path, server):
    trainval = archive(server, 'trainval.tar', make_tar({'VOCdevkit/VOC2007/JPEGImages/a.jpg': b'a',
                                                         'VOCdevkit/VOC2007/ImageSets/Main/trainval.txt': b'a\n'}))
    test = archive(server, 'test.tar', make_tar({'VOCdevkit/VOC2007/JPEGImages/b.jpg': b'b', VAL: b'b\n'}))
    labels = archive(server, 'labels.zip', make_zip({'coco/labels/b.txt': b'0 .5 .5 .1 .1\n'}), dest='extra',
                     strip=1)
    check_dataset(data_yaml(tmp_path, [trainval, test, labels]))
    root = tmp_path / 'ds'
    assert sorted(p.name for p in (root / 'VOCdevkit/VOC2007/JPEGImages').iterdir()) == ['a.jpg', 'b.jpg']
    assert (root / 'VOCdevkit/VOC2007/ImageSets/Main/trainval.txt').is_file() and (root / VAL).is_file()
    assert (root / 'extra/labels/b.txt').read_bytes() == b'0 .5 .5 .1 .1\n' and not (root / 'extra/coco').exists()


# ---------------------------------------------------------------- resume
def test_interrupted_download_resumes_from_the_partial_file(tmp_path, server):
    body = make_tar(FILES)
    entry = archive(server, 'voc.tar', body)
    server.faults['voc.tar'] = 'cut'
    yml = data_yaml(tmp_path, [entry])
    msg = one_line_error(FileNotFoundError, check_dataset, yml)
    part = staging(tmp_path) / 'voc.tar.part'
    assert entry['url'] in msg and 'connection closed' in msg and str(staging(tmp_path) / 'voc.tar') in msg
    assert part.stat().st_size == len(body) // 2 and not (tmp_path / 'ds').exists()
    check_dataset(yml)
    assert server.requests == [('voc.tar', None), ('voc.tar', f'bytes={len(body) // 2}-')]
    assert (tmp_path / 'ds' / VAL).read_bytes() == FILES[VAL]  # md5 of the joined file was checked too


def test_server_ignoring_range_downloads_afresh(tmp_path, server):
    entry = archive(server, 'voc.tar', make_tar(FILES))
    staging(tmp_path).mkdir()
    (staging(tmp_path) / 'voc.tar.part').write_bytes(b'stale bytes of something else')
    server.faults['voc.tar'] = 'ignore-range'
    check_dataset(data_yaml(tmp_path, [entry]))
    assert server.requests == [('voc.tar', 'bytes=29-')]  # asked to resume, got 200: started over
    assert (tmp_path / 'ds' / VAL).read_bytes() == FILES[VAL]


def test_fetch_without_resume_leaves_no_partial_file(tmp_path, server):
    server.files['w.pt'] = b'x' * 5000
    server.faults['w.pt'] = 'cut'
    with pytest.raises(ConnectionError, match='connection closed after 2,500 of 5,000 bytes'):
        fetch(server.url('w.pt'), tmp_path / 'w.pt')  # as the weights download calls it
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- refused archives
@pytest.mark.parametrize('spoil', ['md5', 'size'])
def test_bad_checksum_or_size_is_refused_and_kept_aside(tmp_path, server, spoil):
    entry = archive(server, 'voc.tar', make_tar(FILES))
    entry.update({'md5': '0' * 32} if spoil == 'md5' else {'size': entry['size'] + 1})
    msg = one_line_error(ValueError, check_dataset, data_yaml(tmp_path, [entry]))
    assert 'refused' in msg and ('expected 0000' in msg if spoil == 'md5' else 'bytes, expected' in msg)
    assert sorted(p.name for p in staging(tmp_path).iterdir()) == ['.lock', 'voc.tar.corrupt']
    assert not (tmp_path / 'ds').exists()  # nothing unpacked


@pytest.mark.parametrize('kind', ['tar', 'zip'])
def test_truncated_archive_is_refused(tmp_path, server, kind):
    full = make_tar(FILES) if kind == 'tar' else make_zip(FILES)
    entry = archive(server, f'voc.{kind}', full[:len(full) * 3 // 5])  # size and md5 agree with what is served
    msg = one_line_error(ValueError, check_dataset, data_yaml(tmp_path, [entry]))
    assert f'unreadable {kind} archive' in msg and f'voc.{kind}.corrupt' in msg
    assert (staging(tmp_path) / f'voc.{kind}.corrupt').is_file() and not (tmp_path / 'ds').exists()
    assert not (staging(tmp_path) / f'voc.{kind}.unpack').exists()


@pytest.mark.parametrize('member,reason', [
    ('../evil.txt', "climbs out with '..'"),
    ('ABSOLUTE', 'absolute path'),
    (('symlink', '../../evil_link_target'), 'points outside'),
    ('zip:../evil.txt', "climbs out with '..'"),
], ids=['dotdot', 'absolute', 'symlink', 'zip-dotdot'])
def test_path_traversal_member_is_refused(tmp_path, server, member, reason):
    files = dict(FILES)
    if member == 'ABSOLUTE':
        files[str(tmp_path / 'evil.txt')] = b'pwned'
    elif isinstance(member, tuple):
        files['VOCdevkit/link'] = member
    else:
        files[member.removeprefix('zip:')] = b'pwned'
    body = make_zip(files) if str(member).startswith('zip:') else make_tar(files)
    name = 'evil.zip' if str(member).startswith('zip:') else 'evil.tar'
    msg = one_line_error(ValueError, check_dataset, data_yaml(tmp_path, [archive(server, name, body)]))
    assert 'unsafe archive' in msg and reason in msg
    assert not (tmp_path / 'evil.txt').exists() and not (tmp_path / 'ds').exists()
    assert (staging(tmp_path) / f'{name}.corrupt').is_file()


# ---------------------------------------------------------------- failures that are not the archive's fault
@pytest.mark.parametrize('status', [500, 404])
def test_server_error_is_one_line_with_the_url(tmp_path, server, status):
    entry = archive(server, 'voc.tar', make_tar(FILES))
    if status == 404:
        del server.files['voc.tar']
    else:
        server.faults['voc.tar'] = status
    msg = one_line_error(FileNotFoundError, check_dataset, data_yaml(tmp_path, [entry]))
    assert f'downloading {entry["url"]} failed (HTTP {status}' in msg


def test_offline_names_the_url_and_where_to_put_the_files(tmp_path):
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused
    url = f'http://127.0.0.1:{port}/VOCtest_06-Nov-2007.tar'
    msg = one_line_error(FileNotFoundError, check_dataset, data_yaml(tmp_path, [{'url': url, 'size': 100}]))
    assert url in msg and 'refused' in msg.lower()
    assert f'put the file at {staging(tmp_path) / "VOCtest_06-Nov-2007.tar"}' in msg
    assert f'unpack it into {tmp_path / "ds"}' in msg


def test_failure_mid_unpack_leaves_nothing_and_the_next_run_redoes_it(tmp_path, server, monkeypatch):
    entry = archive(server, 'voc.tar', make_tar(FILES))
    real, calls = archives._write_member, []

    def disk_full(src, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(28, 'No space left on device')
        real(src, target)

    monkeypatch.setattr(archives, '_write_member', disk_full)
    yml = data_yaml(tmp_path, [entry])
    msg = one_line_error(OSError, check_dataset, yml)
    assert 'unpacking voc.tar failed' in msg and 'No space left' in msg
    assert not (tmp_path / 'ds').exists()  # no half-unpacked data set
    assert sorted(p.name for p in staging(tmp_path).iterdir()) == ['.lock', 'voc.tar']  # kept, not refused
    monkeypatch.setattr(archives, '_write_member', real)
    check_dataset(yml)
    assert (tmp_path / 'ds' / VAL).is_file() and len(server.requests) == 1  # unpacked from the kept archive


def test_failure_while_moving_into_place_is_redone_next_run(tmp_path, server, monkeypatch, capsys):
    entry = archive(server, 'voc.tar', make_tar(FILES))
    real = archives._move

    def move_then_crash(src, dst):
        real(src, dst)
        raise OSError(5, 'Input/output error')

    monkeypatch.setattr(archives, '_move', move_then_crash)
    yml = data_yaml(tmp_path, [entry])
    one_line_error(OSError, check_dataset, yml)
    assert (tmp_path / 'ds' / VAL).is_file()  # the sources are there, but the marker says the unpack is unfinished
    assert (staging(tmp_path) / 'voc.tar.merging').is_file()
    assert download.incomplete([str(tmp_path / 'ds' / VAL)], tmp_path / 'ds')
    monkeypatch.setattr(archives, '_move', real)
    check_dataset(yml)
    assert 'an earlier unpack was cut short' in capsys.readouterr().out
    assert not staging(tmp_path).exists() and len(server.requests) == 1
    for name, data in FILES.items():
        assert (tmp_path / 'ds' / name).read_bytes() == data


# ---------------------------------------------------------------- the YAML section
@pytest.mark.parametrize('entry,needle', [
    ({'url': 'ftp://h/x.zip', 'size': 1}, 'must be an http:// or https:// address'),
    ({'url': 'http://h/x.zip'}, 'missing size'),
    ({'url': 'http://h/x.zip', 'size': '10'}, 'size must be a positive number'),
    ({'url': 'http://h/x.zip', 'size': 1, 'md5': 'abc'}, 'md5 must be 32 hex digits'),
    ({'url': 'http://h/x.zip', 'size': 1, 'sha256': 'f' * 63}, 'sha256 must be 64 hex digits'),
    ({'url': 'http://h/x.zip', 'size': 1, 'dest': '../elsewhere'}, 'escapes the data set root'),
    ({'url': 'http://h/x.zip', 'size': 1, 'dest': '/abs'}, 'must be relative'),
    ({'url': 'http://h/x.zip', 'size': 1, 'strip': -1}, 'strip must be'),
    ({'url': 'http://h/x.zip', 'size': 1, 'sha1': 'ab'}, "unknown key 'sha1'"),
    ({'url': 'http://h/x.rar', 'size': 1}, 'must name a .zip or .tar'),
    ('http://h/x.zip', 'must be a mapping'),
], ids=['scheme', 'no-size', 'size-text', 'md5', 'sha256', 'dest-escapes', 'dest-absolute', 'strip', 'key', 'suffix',
        'not-mapping'])
def test_bad_download_section_is_one_line_naming_the_yaml(tmp_path, entry, needle):
    (tmp_path / 'ds' / VAL).parent.mkdir(parents=True)
    (tmp_path / 'ds' / VAL).write_text('x\n')  # on disk: the section is checked all the same
    msg = one_line_error(ValueError, check_dataset, data_yaml(tmp_path, [entry]))
    assert needle in msg and 'download[0]' in msg


def test_download_list_shape_and_duplicates(tmp_path):
    assert 'must be a list of archives' in one_line_error(ValueError, check_dataset, data_yaml(tmp_path, 5))
    same = [{'url': 'http://a/x.zip', 'size': 1}, {'url': 'http://b/x.zip', 'size': 1}]
    assert 'two archives named x.zip' in one_line_error(ValueError, check_dataset, data_yaml(tmp_path, same))


def test_upstream_download_script_is_never_run(tmp_path):
    yml = data_yaml(tmp_path, 'https://github.com/ultralytics/assets/releases/download/v0.0.0/coco128.zip')
    msg = one_line_error(FileNotFoundError, check_dataset, yml)
    assert 'val source' in msg and 'never run here' in msg


def test_repo_yamls_list_the_official_archives():
    voc = download.parse_download(yaml.safe_load((ROOT / 'data/voc.yaml').read_text())['download'], Path('/d/VOC'),
                                  'voc.yaml')
    assert [(a.name, a.size, a.md5, a.dest) for a in voc] == [
        ('VOCtrainval_06-Nov-2007.tar', 460032000, 'c52e279531787c972589f7e41ab4ae64', Path('/d/VOC')),
        ('VOCtest_06-Nov-2007.tar', 451020800, 'b6e924de25625d8de591ea690078ad9f', Path('/d/VOC')),
        ('VOCtrainval_11-May-2012.tar', 1999639040, '6cd6e144f989b92b3379bac3b3de84fd', Path('/d/VOC'))]
    assert all(a.url.startswith('http://host.robots.ox.ac.uk/pascal/VOC/') for a in voc)
    coco = download.parse_download(yaml.safe_load((ROOT / 'data/coco.yaml').read_text())['download'],
                                   Path('/d/coco'), 'coco.yaml')
    assert [a.name for a in coco] == ['coco2017labels.zip', 'train2017.zip', 'val2017.zip', 'test2017.zip',
                                      'annotations_trainval2017.zip']
    labels, *rest = coco
    assert labels.size is None and labels.md5 is None and labels.strip == 1  # unverified: see coco.yaml
    assert all(a.size and a.md5 for a in rest) and {a.dest for a in rest[:3]} == {Path('/d/coco/images')}


# ---------------------------------------------------------------- data YAML names
def test_data_yaml_names_resolve_to_ours_case_insensitively(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of these names in the working folder
    data = ROOT / 'data'
    for name, ours in [('VOC.yaml', 'voc.yaml'), ('voc', 'voc.yaml'), ('Coco.yaml', 'coco.yaml'),
                       ('coco128.yaml', 'coco128.yaml'), ('COCO128', 'coco128.yaml'), ('shapes.yml', 'shapes.yaml')]:
        assert find_data_yaml(name) == data / ours, name
    with pytest.raises(FileNotFoundError) as e:
        check_dataset('Argoverse.yaml')
    assert "upstream YOLOv5's Argoverse.yaml is not shipped" in str(e.value) and 'did you mean one of' in str(e.value)
    with pytest.raises(FileNotFoundError, match=r'coco128-seg.yaml: .*did you mean coco128.yaml\?$'):
        find_data_yaml('coco128-seg.yaml')
    with pytest.raises(FileNotFoundError, match=r"^VisDrone: upstream .*voc.yaml\?$"):
        find_data_yaml('VisDrone')


# ---------------------------------------------------------------- the command line
@pytest.mark.slow
def test_val_cli_with_an_unreachable_download_is_one_error_line(tmp_path):
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    url = f'http://127.0.0.1:{port}/voc.tar'
    yml = data_yaml(tmp_path, [{'url': url, 'size': 100, 'md5': '0' * 32}])
    out = subprocess.run([sys.executable, 'val.py', '--data', str(yml), '--weights', str(tmp_path / 'none.pt')],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stderr.splitlines() if line.startswith('error:')]
    assert out.returncode != 0 and 'Traceback' not in out.stderr, out.stderr[-2000:]
    assert len(errors) == 1 and out.stderr.strip().splitlines()[-1] == errors[0]
    assert url in errors[0] and 'put the file at' in errors[0]
