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

# Demuxers of audio files: what OpenAI's transcription API takes (flac, mp3, mp4, mpeg, mpga, m4a, ogg,
# wav, webm), the other audio-only formats, and ffmpeg's own NUT. Anything else ffmpeg recognises —
# images, video containers, subtitles, playlists (HLS, concat) that would fetch other URLs or files — is
# refused: an upload is judged by what its bytes decode as, never by its name or content type.
AUDIO_FORMATS = frozenset({
    "wav", "w64", "flac", "ogg", "mp3", "mpeg", "aac", "aiff", "au", "caf", "amr", "amrnb", "amrwb", "wv", "ape",
    "tta", "mov", "mp4", "m4a", "3gp", "3g2", "matroska", "webm", "nut",
})


def _no_other_files(url: str, flags: int, options: dict[str, str]) -> None:
    """ffmpeg's hook for a format that wants to open another file or URL: never allowed."""
    raise PermissionError("an audio upload may not refer to other files")


def decode_audio(data: bytes, *, max_seconds: float) -> np.ndarray:
    """Decode, downmix and resample. Refuses empty input, non-audio bytes and audio over `max_seconds`.

    Long audio is refused before decoding when the container declares its duration, and while
    decoding otherwise: memory never holds more than `max_seconds` of samples (plus one frame).
    """
    if not data:
        raise InvalidInput("The audio file is empty.")
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r", io_open=_no_other_files)
    except (av.error.FFmpegError, ValueError, PermissionError) as exc:
        raise InvalidInput(f"The file is not audio we can decode ({exc.__class__.__name__}).") from None
    with container:
        if not container.streams.audio:
            raise InvalidInput("The file has no audio stream.")
        if not AUDIO_FORMATS.intersection(container.format.name.split(",")):
            raise InvalidInput(f"The file is {container.format.long_name or container.format.name}, not an audio file we take.")
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
