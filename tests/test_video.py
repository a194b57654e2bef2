"""Videos through the batch runner: frames, timing, sound, size, limits, resume and bad files, on short
clips written here with PyAV and the tiny random model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

from osediff.batch import BatchConfig, run  # noqa: E402
from osediff.params import UpscaleParams  # noqa: E402
from osediff.pipeline import OSEDiffPipeline, Upscaler  # noqa: E402
from osediff.video import VideoOptionError, VideoOptions  # noqa: E402
from osediff.video.runner import merge_prompts  # noqa: E402

TB = Fraction(1, 12288)


def make_clip(path: Path, pts: list[int], size=(24, 16), audio_seconds: float = 0.0, rate: int = 24) -> Path:
    """An H.264 clip with frames at ``pts`` (in 1/12288 s; uneven steps make a variable frame rate)
    and optionally a mono AAC track."""
    rng = np.random.default_rng(len(pts))
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate, options={"bf": "0", "g": "6"})
        video.width, video.height = size
        video.pix_fmt = "yuv420p" if size[0] % 2 == size[1] % 2 == 0 else "yuv444p"
        video.time_base = video.codec_context.time_base = TB
        sound = out.add_stream("aac", rate=16000) if audio_seconds else None
        if sound is not None:
            sound.layout = "mono"
        for i, stamp in enumerate(pts):
            array = np.clip(rng.normal(120, 40, (size[1], size[0], 3)) + i * 4, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = stamp, TB
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            for start in range(0, int(16000 * audio_seconds), 1024):
                samples = (np.sin(np.arange(start, start + 1024) / 7.0) * 0.2).astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                out.mux(sound.encode(frame))
            out.mux(sound.encode())
    return path


def frame_pts(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [frame.pts for frame in container.decode(video=0)]


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


@pytest.fixture
def upscaler(fresh_components, tiny_weights, single_thread) -> Upscaler:
    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    return Upscaler(pipe)


def job(inputs, out, upscale=2.0, **video) -> BatchConfig:
    return BatchConfig(inputs=[str(p) for p in inputs], output=out, batch_size=3,
                       params=UpscaleParams(upscale=upscale, prompt_extractor="text", prompt="a street"),
                       video=VideoOptions(**video))


def test_frames_timing_sound_and_size_are_kept(upscaler, tmp_path):
    stamps = [0, 512, 1024, 1536, 2304, 2816, 3328, 4096, 4608, 5120, 5632, 6144]  # uneven: variable rate
    clip = make_clip(tmp_path / "clip.mp4", stamps, size=(21, 13), audio_seconds=0.6)
    summary = run(job([clip], tmp_path / "out", upscale=3.0, segment_seconds=0.15), upscaler=upscaler)
    out = tmp_path / "out" / "clip.mp4"
    assert summary.written == 1 and summary.failed == 0
    record = summary.records[0]
    assert record.frames == 12 and record.segments >= 3 and record.prompt == "a street"
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (63, 39)  # exact, odd: 4:4:4 rather than a rounded size
        assert stream.time_base == TB and stream.codec_context.name == "h264"
    assert frame_pts(out) == stamps
    assert audio_packets(out) == audio_packets(clip) and len(audio_packets(clip)) > 5
    assert not (tmp_path / "out" / ".clip.mp4.parts").exists()  # the work folder goes once the file is in place


def test_frames_are_the_steps_outputs(upscaler, tmp_path):
    clip = make_clip(tmp_path / "c.mp4", [i * 512 for i in range(4)], size=(21, 13))
    run(job([clip], tmp_path / "out", upscale=3.0, crf=0), upscaler=upscaler)  # odd size: 4:4:4, lossless
    with av.open(str(clip)) as container:
        inputs = [frame.to_image() for frame in container.decode(video=0)]
    expected = upscaler.upscale([(_loaded(image), UpscaleParams(upscale=3.0, prompt="a street",
                                                                prompt_extractor="text")) for image in inputs])
    with av.open(str(tmp_path / "out" / "c.mp4")) as container:
        got = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    for result, array in zip(expected, got, strict=True):
        error = np.asarray(result.image, np.float64) - array
        psnr = 10 * np.log10(255**2 / np.mean(error**2))
        assert psnr > 40, psnr  # only the RGB -> YUV -> RGB rounding between them


def test_start_duration_and_max_frames_cut_video_and_sound(upscaler, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", [i * 512 for i in range(24)], audio_seconds=1.0)
    summary = run(job([clip], tmp_path / "a", start=0.25, duration=0.5), upscaler=upscaler)
    assert summary.records[0].frames == 12
    cut = frame_pts(tmp_path / "a" / "clip.mp4")
    assert cut == [i * 512 for i in range(12)]  # starts at 0: shifted by the --start cut
    assert 0 < len(audio_packets(tmp_path / "a" / "clip.mp4")) < len(audio_packets(clip))
    summary = run(job([clip], tmp_path / "b", max_frames=5), upscaler=upscaler)
    assert frame_pts(tmp_path / "b" / "clip.mp4") == [i * 512 for i in range(5)]


def test_a_truncated_video_fails_in_one_line_and_the_batch_goes_on(upscaler, tmp_path):
    good = make_clip(tmp_path / "good.mp4", [i * 512 for i in range(3)])
    data = make_clip(tmp_path / "full.mp4", [i * 512 for i in range(12)]).read_bytes()
    (tmp_path / "broken.mp4").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (12, 10), "red").save(tmp_path / "photo.png")
    summary = run(job([tmp_path / "broken.mp4", good, tmp_path / "photo.png"], tmp_path / "out"), upscaler=upscaler)
    failed = [r for r in summary.records if r.status == "failed"]
    assert [Path(r.input).name for r in failed] == ["broken.mp4"]
    assert "\n" not in failed[0].error and "broken.mp4" in failed[0].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.mp4", "photo.png"]


def test_options_are_checked_and_named_by_their_flags(tiny_base_dir, tiny_pkl, tmp_path):
    with pytest.raises(VideoOptionError, match=r"0\.\.51"):
        VideoOptions(codec="libx264", crf=60)
    with pytest.raises(VideoOptionError, match="bitrate"):
        VideoOptions(crf=20, bitrate=1_000_000)
    clip = make_clip(tmp_path / "clip.mp4", [0, 512])
    done = subprocess.run([sys.executable, "-m", "osediff", "upscale", str(clip), "-o", str(tmp_path / "o"),
                           "--video-codec", "nope264", "--base", str(tiny_base_dir), "--weights", str(tiny_pkl),
                           "--prompt-extractor", "text", "--offline"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--video-codec 'nope264' is not an installed video encoder" in done.stderr


def test_a_killed_run_resumes_and_writes_each_segment_once(tiny_base_dir, tiny_pkl, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", [i * 512 for i in range(48)], size=(32, 24), audio_seconds=2.0)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "osediff", "upscale", str(clip), "-o", str(out), "--base",
               str(tiny_base_dir), "--weights", str(tiny_pkl), "--prompt-extractor", "text", "--offline",
               "--segment-seconds", "0.25", "--upscale", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    parts = out / ".clip.mp4.parts"
    deadline = time.monotonic() + 180
    while len(list(parts.glob("0000[0-9].nut"))) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in parts.glob("[0-9]*.nut")}
    assert 2 <= len(kept) < 8 and not (out / "clip.mp4").exists()
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    done_again = {int(line.split("segment ")[1].split("/")[0]) - 1 for line in second.stderr.splitlines()
                  if ": segment " in line}
    assert done_again.isdisjoint(int(name[:5]) for name in kept)  # nothing done twice
    assert f"resumed: {len(kept)} of 8 segments were done" in second.stderr
    assert frame_pts(out / "clip.mp4") == [i * 512 for i in range(48)]
    assert audio_packets(out / "clip.mp4") == audio_packets(clip)


def test_matroska_keeps_its_container_timestamps_and_colour_tags(upscaler, tmp_path):
    src = tmp_path / "tagged.mkv"
    with av.open(str(src), "w") as out:  # full range, BT.709: tags a decoder needs to show the colours right
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 16, 12, "yuv420p"
        tags = {"color_range": 2, "colorspace": 1, "color_primaries": 1, "color_trc": 1}
        for tag, value in tags.items():
            setattr(video.codec_context, tag, value)
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((12, 16, 3), 40 * i, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=2)
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
    assert run(job([src], tmp_path / "out"), upscaler=upscaler).written == 1
    with av.open(str(tmp_path / "out" / "tagged.mkv")) as container:
        context = container.streams.video[0].codec_context
        assert {tag: int(getattr(context, tag)) for tag in tags} == tags
        assert container.format.name.startswith("matroska")
    assert frame_pts(tmp_path / "out" / "tagged.mkv") == frame_pts(src)


def test_one_prompt_per_clip_or_one_per_run_of_frames(fresh_components, tiny_weights, single_thread, tmp_path):
    from osediff.prompts.offered import PromptExtractors

    calls = []

    def tagger(images, user_prompt):  # a stand-in for DAPE: tags by brightness
        calls.append(len(images))
        return [("bright, " if np.asarray(image).mean() > 128 else "dark, ") + "noise" for image in images]

    pipe = OSEDiffPipeline(fresh_components)
    pipe.load_weights(tiny_weights)
    upscaler = Upscaler(pipe, PromptExtractors(built={"dape": tagger}))
    encoded = []
    real_encode = pipe.encode_prompt
    upscaler.prompts._encode = lambda prompt: encoded.append(prompt) or real_encode(prompt)
    clip = make_clip(tmp_path / "clip.mp4", [i * 512 for i in range(8)], size=(16, 12))  # brightens frame by frame
    params = UpscaleParams(upscale=2.0, prompt_extractor="dape")
    config = BatchConfig(inputs=[str(clip)], output=tmp_path / "a", params=params, batch_size=4)
    record = run(config, upscaler=upscaler).records[0]
    assert calls == [3] and encoded == [record.prompt] == ["noise, bright"]  # 2 of the 3 sampled frames are bright
    calls.clear()
    config = BatchConfig(inputs=[str(clip)], output=tmp_path / "b", params=params, batch_size=4,
                         video=VideoOptions(prompt_every=3))
    assert run(config, upscaler=upscaler).written == 1
    assert calls == [1, 1, 1]  # frames 0, 3 and 6 of the one segment start a run


def test_one_prompt_per_clip_is_the_tags_most_frames_share():
    assert merge_prompts(["car, street, sky", "street, car, tree", "street, dog"]) == "car, street"
    assert merge_prompts(["a cat"]) == "a cat"


def _loaded(image):
    from osediff.images import LoadedImage

    return LoadedImage(image, None)


def test_a_run_that_fails_before_the_model_loads_leaves_no_folder(tiny_base_dir, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", [0, 512])
    done = subprocess.run([sys.executable, "-m", "osediff", "upscale", str(clip), "-o", str(tmp_path / "out"),
                           "--base", str(tiny_base_dir), "--weights", str(tmp_path / "missing.pkl"),
                           "--prompt-extractor", "text", "--offline"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "missing.pkl" in done.stderr
    assert not (tmp_path / "out").exists()  # no work folder before the model is there


def test_an_encoder_failure_fails_that_video_in_one_line(upscaler, tmp_path):
    odd = make_clip(tmp_path / "odd.mp4", [i * 512 for i in range(7)], size=(21, 13))
    summary = run(job([odd], tmp_path / "out", upscale=3.0, codec="mpeg4"), upscaler=upscaler)
    record = summary.records[0]
    assert record.status == "failed" and "\n" not in record.error
    assert record.error.startswith(f"{odd}: mpeg4 needs an even output size, got 63x39")
    assert not (tmp_path / "out" / "odd.mp4").exists()
