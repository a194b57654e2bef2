"""``osediff demo`` says where the page is and how to share it in its own terms (--share), not gradio's
("set `share=True` in `launch()`")."""

from __future__ import annotations

import socket
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_demo_points_to_its_share_flag(tiny_base_dir, tiny_pkl, monkeypatch, capsys):
    pytest.importorskip("gradio")
    from osediff.cli import main
    from osediff.demo import page

    launched = []
    launch = page.launch_demo

    def launch_and_return(demo, **kwargs):  # the real launch, without blocking; closed below
        launched.append(demo)
        return launch(demo, **{**kwargs, "block": False})

    monkeypatch.setattr(page, "launch_demo", launch_and_return)
    port = free_port()
    try:
        assert main(["demo", "--no-examples", "--base", str(tiny_base_dir), "--weights", str(tiny_pkl),
                     "--device", "cpu", "--offline", "--port", str(port)]) == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
    finally:
        for demo in launched:
            demo.close()
    out = capsys.readouterr().out
    assert "share=True" not in out and "launch()" not in out and "Running on local URL" not in out
    assert (f"demo on http://127.0.0.1:{port}/; Ctrl-C stops it (--share also makes a public gradio.live link)"
            in out.splitlines())


def test_launch_demo_tells_the_caller_where_it_runs(monkeypatch, capsys):
    gr = pytest.importorskip("gradio")
    from osediff.demo.page import launch_demo

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with gr.Blocks() as demo:
        gr.Markdown("hello")
    port = free_port()
    seen = []
    launch_demo(demo, port=port, block=False, announce=lambda url, public: seen.append((url, public)))
    try:
        assert seen == [(f"http://127.0.0.1:{port}/", None)]
    finally:
        demo.close()
    launch_demo(demo, port=port, block=False)  # by default, one line of its own
    demo.close()
    out = capsys.readouterr().out
    assert f"running on http://127.0.0.1:{port}/" in out.splitlines() and "share=True" not in out
