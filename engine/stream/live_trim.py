"""Live mode's bounded memory: drop a finished 30 s segment of speech (and its features) from an open utterance.

The audio encoder attends over 30 s windows, so once every frame whose window
reaches into a segment has been made (its chunk submitted, its features computed), that segment's samples are never needed
again: the buffer keeps at most the current segment plus the queued speech.
"""

from __future__ import annotations

from engine.constants import HOP_LENGTH, MEL_WINDOW_FRAMES, SAMPLES_PER_FRAME
from engine.stream.live_features import LiveFeatures
from engine.stream.pcm import PcmBuffer

SEGMENT_SAMPLES = MEL_WINDOW_FRAMES * HOP_LENGTH  # 30 s
SEGMENT_FRAMES = SEGMENT_SAMPLES // SAMPLES_PER_FRAME  # 750 frames
SEGMENT_DONE_FRAMES = SEGMENT_FRAMES + 2  # frames whose windows still reach into the segment before


def trim_finished_segment(utt, audio_encoder) -> bool:
    """Open live utterance `utt`: drop its first 30 s segment once it is rendered; True if one was dropped.

    Call under the speech queue's lock (pushes append to `utt.pcm` concurrently).
    """
    if utt.ended or not (utt.submitted - utt.trimmed_frames >= SEGMENT_DONE_FRAMES and len(utt.pcm) > SEGMENT_SAMPLES):
        return False
    rest = utt.pcm.array()[SEGMENT_SAMPLES:].copy()
    utt.pcm = PcmBuffer(utt.pcm.max_samples)
    utt.pcm.append(rest)
    utt.trimmed_frames += SEGMENT_FRAMES
    utt.live = LiveFeatures(audio_encoder)
    return True
