"""Audio uploads are judged by what their bytes decode as: never by file name or content type."""
from __future__ import annotations

import io
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from inference.audio import decode_audio
from inference.errors import InvalidInput
from routing.models import InferenceRecord
from tests.routing.conftest import FIXTURES


def png() -> bytes:
    """A real 1×1 PNG image, which ffmpeg recognises (as an image, not audio)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")


class Watcher:
    """A loopback HTTP server that records every request: an upload must never make us fetch anything."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def watcher():
    watcher = Watcher()
    yield watcher
    watcher.server.shutdown()
    watcher.server.server_close()


def post(api, caller, path: str, name: str, content: bytes, content_type: str):
    return api.post(path, {"file": SimpleUploadedFile(name, content, content_type=content_type)}, format="multipart", **caller.auth)


def playlist(watcher: Watcher) -> bytes:
    port = watcher.server.server_port
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n"
            f"http://127.0.0.1:{port}/internal-secret.aac\n#EXT-X-ENDLIST\n").encode()


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/intent"])
@pytest.mark.parametrize("name, content_type, content", [
    ("clip.wav", "audio/wav", png()),
    ("clip.mp3", "audio/mpeg", b"ID3" + b"\x00" * 64 + b"not really an mp3 " * 40),
    ("clip.flac", "audio/flac", b"fLaC" + b"\x00" * 100),
    ("clip.ogg", "audio/ogg", "<html><body>hello</body></html>".encode() * 30),
])
def test_non_audio_bytes_under_an_audio_name_are_invalid_audio(api, alice, starter, path, name, content_type, content):
    response = post(api, alice, path, name, content, content_type)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_audio" and error["request_id"]
    assert not InferenceRecord.objects.exists()


def test_a_playlist_is_refused_and_nothing_it_names_is_fetched(api, alice, starter, watcher):
    response = post(api, alice, "/v1/audio/transcriptions", "clip.m3u8", playlist(watcher), "audio/mpegurl")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_audio"
    assert watcher.hits == []


def test_even_a_forced_playlist_cannot_open_another_file(watcher):
    """decode_audio's own guard, below the format check: ffmpeg may open no other file or URL."""
    import av

    from inference.audio import _no_other_files

    with pytest.raises(PermissionError):
        av.open(io.BytesIO(playlist(watcher)), mode="r", format="hls", io_open=_no_other_files)
    assert watcher.hits == []
    with pytest.raises(InvalidInput, match="no audio stream"):
        decode_audio(png(), max_seconds=10)


def test_audio_in_a_container_outside_the_audio_formats_is_refused():
    """The audio formats (and MP4, WebM) are taken; audio inside a video container such as AVI is not."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as container:
        stream = container.add_stream("pcm_s16le", rate=16_000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16_000), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 16_000
        for packet in stream.encode(frame):
            container.mux(packet)
    with pytest.raises(InvalidInput, match="not an audio file we take"):
        decode_audio(buffer.getvalue(), max_seconds=10)


def test_real_audio_is_accepted_whatever_its_name_and_content_type(api, alice, starter):
    audio = (FIXTURES / "search_en.flac").read_bytes()
    response = post(api, alice, "/v1/audio/transcriptions", "notes.txt", audio, "text/plain")
    assert response.status_code == 200, response.content
    assert "shoes" in response.json()["text"].lower()
