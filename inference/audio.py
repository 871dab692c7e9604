"""Audio bytes → mono float32 at 16 kHz, without an ffmpeg binary (PyAV decodes WAV/FLAC/OGG/MP3…)."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from inference.errors import InvalidInput

if TYPE_CHECKING:
    from av.audio.stream import AudioStream
    from av.container import InputContainer

SAMPLE_RATE = 16_000


def decode_audio(data: bytes, *, max_seconds: float) -> np.ndarray:
    """Decode, downmix and resample. Refuses empty input, non-audio bytes and audio over `max_seconds`.

    Long audio is refused before decoding when the container declares its duration, and while
    decoding otherwise: memory never holds more than `max_seconds` of samples (plus one frame).
    """
    if not data:
        raise InvalidInput("The audio file is empty.")
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as exc:
        raise InvalidInput(f"The file is not audio we can decode ({exc.__class__.__name__}).") from None
    with container:
        if not container.streams.audio:
            raise InvalidInput("The file has no audio stream.")
        stream = container.streams.audio[0]
        declared = _declared_seconds(container, stream)
        if declared is not None and declared > max_seconds:
            raise InvalidInput(f"The audio lasts {declared:.0f} s; the limit is {max_seconds:.0f} s.")
        # Resample every channel and average them here: libswresample's own mono downmix weighs each
        # side of a stereo file by 1/√2, so identical channels come out 41 % louder and can clip.
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        limit = int(max_seconds * SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    array = out.to_ndarray().mean(axis=0, dtype=np.float32)
                    chunks.append(array)
                    total += array.size
                if total > limit:  # streams without a declared duration are cut off while decoding
                    raise InvalidInput(f"The audio lasts more than {max_seconds:.0f} s, the limit.")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
        except (av.error.FFmpegError, ValueError) as exc:
            # ValueError: a frame whose layout or rate changed mid-stream, which the resampler refuses.
            raise InvalidInput(f"The audio could not be decoded ({exc.__class__.__name__}).") from None
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise InvalidInput("The audio contains no samples.")
    return samples


def _declared_seconds(container: InputContainer, stream: AudioStream) -> float | None:
    """The duration the file claims, from the stream or else the container; None when neither says."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:  # in AV_TIME_BASE units (microseconds)
        return container.duration / 1_000_000
    return None
