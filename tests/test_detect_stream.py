"""detect.py on a network stream: a small video served over HTTP from 127.0.0.1, read through OpenCV's FFmpeg."""
import contextlib
import functools
import http.server
import socket
import threading

import cv2
import pytest

import detect
from utils.deploy.sources import open_source, redact_url, stream_stem
from test_detect import planted_model, save_model, write_video  # tests/ is on sys.path (pytest rootdir)

ffmpeg = pytest.mark.skipif('FFMPEG:                      YES' not in cv2.getBuildInformation(),
                            reason="this OpenCV build has no FFmpeg backend")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_folder(folder, seconds=120):
    """An HTTP server for ``folder`` on 127.0.0.1 (a free port) in a daemon thread; stops when the block ends,
    or after ``seconds`` at the latest."""
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    watchdog = threading.Timer(seconds, server.shutdown)
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    return save_model(planted_model(), tmp_path_factory.mktemp('w') / 'planted.pt')


@pytest.mark.slow
@ffmpeg
def test_http_video_stream_frame_by_frame_with_stride(weights, tmp_path, capsys):
    clip = write_video(tmp_path / 'clip.avi', 'MJPG', n=7)
    local = detect.run(weights=weights, source=str(clip), imgsz=128, vid_stride=3, project=str(tmp_path / 'a'))
    with serve_folder(tmp_path) as root:
        url = f'{root}/clip.avi'
        streamed = detect.run(weights=weights, source=url, imgsz=128, vid_stride=3, save_txt=True,
                              project=str(tmp_path / 'b'))
    assert [r['frame'] for r in streamed] == [1, 4, 7] == [r['frame'] for r in local]
    for a, b in zip(local, streamed):
        assert b['path'] == url and a['det'].shape == b['det'].shape and (a['det'] - b['det']).abs().max() < 1e-4
    out_dir = tmp_path / 'b' / 'exp'
    assert (out_dir / 'clip.mp4').is_file() and (out_dir / 'labels' / 'clip_4.txt').is_file()
    written = cv2.VideoCapture(str(out_dir / 'clip.mp4'))
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    written.release()
    assert f'stream (4/7) {url}: 96x128 12 dogs' in capsys.readouterr().out


@ffmpeg
def test_unreachable_stream_is_one_line(weights, tmp_path):
    with socket.socket() as s:  # a port nobody listens on: the connection is refused at once
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    url = f'http://127.0.0.1:{port}/live.mp4'
    with pytest.raises(ValueError, match=f'^{url}: cannot open the stream'):
        open_source(url)
    with pytest.raises(SystemExit) as e:
        detect.main(['--weights', weights, '--source', url, '--project', str(tmp_path / 'r')])
    assert str(e.value).startswith(f'error: {url}: cannot open the stream') and not (tmp_path / 'r').exists()


def test_stream_names_and_redaction():
    assert redact_url('rtsp://admin:secret@10.0.0.5:554/live') == 'rtsp://admin:***@10.0.0.5:554/live'
    assert redact_url('rtsp://10.0.0.5/live') == 'rtsp://10.0.0.5/live'
    assert stream_stem('http://127.0.0.1:8000/clips/clip.mp4') == 'clip'
    assert stream_stem('rtsp://cam.local:554/') == 'cam.local'
    with pytest.raises(ValueError, match='images are not downloaded'):
        open_source('https://example.com/bus.jpg')
