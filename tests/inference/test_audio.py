"""decode_audio: every common format in, mono float32 at 16 kHz out; bad or overlong files refused."""
from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from inference.audio import SAMPLE_RATE, decode_audio
from inference.errors import InvalidInput

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "audio"


def tone(seconds: float, rate: int, frequency: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def with_soundfile(samples: np.ndarray, rate: int, file_format: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=file_format, subtype=subtype)
    return buffer.getvalue()


def with_pyav(samples: np.ndarray, rate: int, container_format: str, codec: str) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def dominant_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE)[spectrum.argmax()])


ENCODERS = {
    "wav": lambda x, rate: with_soundfile(x, rate, "WAV", "PCM_16"),
    "flac": lambda x, rate: with_soundfile(x, rate, "FLAC", "PCM_16"),
    "ogg-vorbis": lambda x, rate: with_soundfile(x, rate, "OGG", "VORBIS"),
    "mp3": lambda x, rate: with_pyav(x, rate, "mp3", "libmp3lame"),
    "aac": lambda x, rate: with_pyav(x, rate, "adts", "aac"),
}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_it_decodes_each_common_format_to_mono_float32_at_16_khz(encoding: str):
    data = ENCODERS[encoding](tone(2.0, SAMPLE_RATE), SAMPLE_RATE)

    samples = decode_audio(data, max_seconds=10)

    assert samples.dtype == np.float32 and samples.ndim == 1
    # Lossy codecs add encoder delay and pad the last frame: AAC in ADTS keeps up to two 1024-sample frames.
    assert samples.size / SAMPLE_RATE == pytest.approx(2.0, abs=0.15)
    assert dominant_frequency(samples) == pytest.approx(440, abs=5)
    assert np.abs(samples).max() == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_it_resamples_other_rates_keeping_duration_and_pitch(rate: int):
    data = with_soundfile(tone(3.0, rate), rate, "WAV", "PCM_16")

    samples = decode_audio(data, max_seconds=10)

    assert samples.size == pytest.approx(3 * SAMPLE_RATE, abs=SAMPLE_RATE * 0.01)
    assert dominant_frequency(samples) == pytest.approx(440, abs=3)


def test_it_averages_stereo_channels_into_mono():
    left = tone(1.0, 44_100)
    same = decode_audio(with_soundfile(np.stack([left, left], axis=1), 44_100, "WAV", "FLOAT"), max_seconds=5)
    one_side = decode_audio(
        with_soundfile(np.stack([left, np.zeros_like(left)], axis=1), 44_100, "WAV", "FLOAT"), max_seconds=5
    )

    assert same.ndim == 1 and same.size == pytest.approx(SAMPLE_RATE, abs=10)
    # The mean of two identical channels is that channel: no louder, no clipping.
    assert np.abs(same).max() == pytest.approx(0.5, abs=0.01)
    assert np.abs(one_side).max() == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is a text file, not a recording\n" * 20, "not audio"),
        (b"\x00" * 4096, "not audio"),
        (b'{"audio": "base64?"}', "not audio"),
    ],
    ids=["empty", "text", "zeros", "json"],
)
def test_it_refuses_what_is_not_audio(data: bytes, message: str):
    with pytest.raises(InvalidInput, match=message):
        decode_audio(data, max_seconds=10)


def test_it_refuses_a_file_without_an_audio_stream():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="nut") as container:
        stream = container.add_stream("ffv1", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for packet in stream.encode(frame.reformat(format="yuv420p")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)

    with pytest.raises(InvalidInput, match="no audio stream"):
        decode_audio(buffer.getvalue(), max_seconds=10)


def test_it_refuses_a_two_hour_file_from_its_declared_duration_without_decoding_it():
    # Two hours of silence compress to ~180 KB of FLAC, written a minute at a time.
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", samplerate=8_000, channels=1, format="FLAC", subtype="PCM_16") as out:
        minute = np.zeros(8_000 * 60, np.int16)
        for _ in range(120):
            out.write(minute)

    # "lasts 7200 s" is the message of the check made before decoding; decoding would say "more than".
    with pytest.raises(InvalidInput, match="lasts 7200 s; the limit is 600 s"):
        decode_audio(buffer.getvalue(), max_seconds=600)


def test_it_stops_decoding_at_the_limit_when_the_container_declares_no_duration():
    # NUT declares no duration, so only the running count while decoding can stop it.
    data = with_pyav(tone(20.0, SAMPLE_RATE), SAMPLE_RATE, "nut", "pcm_s16le")
    with av.open(io.BytesIO(data)) as container:
        assert not container.streams.audio[0].duration and not container.duration

    with pytest.raises(InvalidInput, match="more than 5 s"):
        decode_audio(data, max_seconds=5)
    assert decode_audio(data, max_seconds=30).size == 20 * SAMPLE_RATE


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir() if p.suffix in {".flac", ".ogg"}))
def test_the_speech_fixtures_decode_to_their_recorded_length(name: str):
    path = FIXTURES / name
    assert path.stat().st_size < 100_000

    samples = decode_audio(path.read_bytes(), max_seconds=30)

    assert samples.size / SAMPLE_RATE == pytest.approx(soundfile.info(str(path)).duration, abs=0.05)
    assert 0.1 < np.abs(samples).max() <= 1.0
