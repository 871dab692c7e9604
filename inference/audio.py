"""Audio bytes → mono float32 at 16 kHz, without an ffmpeg binary (PyAV decodes WAV/FLAC/OGG/MP3…)."""
from __future__ import annotations

import io

import numpy as np

from inference.errors import InvalidInput

SAMPLE_RATE = 16_000


def decode_audio(data: bytes, *, max_seconds: float) -> np.ndarray:
    """Decode, downmix and resample. Refuses empty input, non-audio bytes and audio over `max_seconds`."""
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
        declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        if declared is not None and declared > max_seconds:
            raise InvalidInput(f"The audio lasts {declared:.0f} s; the limit is {max_seconds:.0f} s.")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        limit = int(max_seconds * SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    array = out.to_ndarray().reshape(-1)
                    chunks.append(array)
                    total += array.size
                if total > limit:  # streams without a declared duration are cut off while decoding
                    raise InvalidInput(f"The audio lasts more than {max_seconds:.0f} s, the limit.")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise InvalidInput(f"The audio could not be decoded ({exc.__class__.__name__}).") from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise InvalidInput("The audio contains no samples.")
    return samples
