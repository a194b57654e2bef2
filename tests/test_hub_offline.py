"""Model-file resolution without a network: one probe per host, one line, remembered, nothing left behind."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

from osediff.checkpoint import (
    KNOWN_SHA256,
    MissingFile,
    ModelNotFoundError,
    Option,
    hub,
    network,
    resolve_base,
    resolve_file,
)
from osediff.cli.flags import flag_for
from osediff.errors import OSEDiffError
from osediff.prompts import extractor_needs_model, files, resolve_extractor_files


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty download and hub caches, and every socket refused and counted (only the probe may "connect")."""
    from huggingface_hub import constants

    monkeypatch.setenv("OSEDIFF_CACHE", str(tmp_path / "cache" / "osediff"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache" / "hub"))
    connects: list[object] = []

    def refuse(*args, **kwargs):
        connects.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return connects


def test_offline_dape_fails_fast_in_one_line_and_probes_each_host_once(caches, no_network):
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_extractor_files("dape")
    first_s = time.perf_counter() - started
    cli = info.value.message(flag_for)
    assert "not in the local cache and the hub could not be reached" in cli
    for flag in ("--ram ", "--dape ", "--ram-tags "):
        assert flag in cli
    for jargon in ("LocalEntryNotFoundError", "tags_path", "Retrying", "\n"):
        assert jargon not in cli
    # one probe per host (hub, github.com, raw.githubusercontent.com), and no other connection at all
    assert len(no_network) == len(set(no_network)) == 3 and not caches
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as again:
        resolve_extractor_files("dape")
    assert time.perf_counter() - started < 0.1 and first_s < 1.0
    assert str(again.value) == str(info.value) and len(no_network) == 3


def test_a_failed_resolution_is_remembered(caches, monkeypatch):
    with pytest.raises(ModelNotFoundError):
        resolve_file("hf://owner/repo/model.pth")

    def must_not_run(*args, **kwargs):
        raise AssertionError("resolved again")

    monkeypatch.setattr(hub, "_resolve_file", must_not_run)
    with pytest.raises(ModelNotFoundError, match=r"model\.pth: not in the local cache"):
        resolve_file("hf://owner/repo/model.pth")
    network.forget()  # e.g. the network came back: try again
    with pytest.raises(AssertionError, match="resolved again"):
        resolve_file("hf://owner/repo/model.pth")


def test_base_typos_say_folder_not_found(tmp_path, caches, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for typo in (str(tmp_path / "sd21-bse"), "./sd21", "~/no-such-sd21", "models/sd21", "models/a/b"):
        with pytest.raises(ModelNotFoundError, match=r"folder not found; pass base=") as info:
            resolve_base(typo)
        assert "HFValidationError" not in info.value.message(flag_for) and "--base" in info.value.message(flag_for)
    with pytest.raises(ModelNotFoundError, match="not a local folder nor a hub id"):
        resolve_base("not a/hub id!")
    with pytest.raises(ModelNotFoundError, match="not in the local cache and the hub could not be reached"):
        resolve_base("someone/sd21-copy")


def test_offline_flag_and_env_are_worded_as_such(caches, monkeypatch, no_network):
    with pytest.raises(ModelNotFoundError, match=r"not in the local cache \(offline mode\)"):
        resolve_extractor_files("caption", local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"osediff.pkl: not in the local cache \(offline mode\)"):
        resolve_file("hf://owner/repo/osediff.pkl")
    assert not no_network  # neither asked the network


def test_failed_downloads_leave_no_empty_folders(tmp_path, caches, monkeypatch):
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotFoundError, match="download failed"):
        resolve_file((tmp_path / "missing.pth").as_uri())
    monkeypatch.setattr(network, "_probe", lambda url: True)

    def flaky_hub(repo_id, filename, **kwargs):  # what the hub client leaves when a download breaks
        name = "models--" + repo_id.replace("/", "--")
        for folder in (f"{name}/blobs", f"{name}/snapshots", f".locks/{name}"):
            (tmp_path / "cache" / "hub" / folder).mkdir(parents=True, exist_ok=True)
        raise ConnectionError("connection reset")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", flaky_hub)
    with pytest.raises(ModelNotFoundError, match=r"could not be downloaded from the hub \(ConnectionError"):
        resolve_file("hf://owner/repo/DAPE.pth")
    assert not (cache / "osediff").exists()  # the URL download's folder went with it
    assert not list(cache.rglob("models--owner--repo"))


def test_checksum_mismatch_fails_in_one_line_and_deletes_the_download(tmp_path, caches):
    served = tmp_path / "served" / "DAPE.pth"
    served.parent.mkdir()
    served.write_bytes(b"not the published DAPE weights")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_file(served.as_uri(), sha256=KNOWN_SHA256["DAPE.pth"])
    message = str(info.value)
    assert "checksum mismatch" in message and "the download was deleted" in message and "\n" not in message
    assert not (tmp_path / "cache" / "osediff").exists()  # neither the file nor its folder stays
    good = hashlib.sha256(served.read_bytes()).hexdigest()
    assert resolve_file(served.as_uri(), sha256=good).read_bytes() == served.read_bytes()


def test_default_prompt_files_are_pinned(tmp_path, caches, monkeypatch):
    served = tmp_path / "ram_swin_large_14m.pth"
    served.write_bytes(b"a different file")
    monkeypatch.setattr(files, "DEFAULT_RAM", served.as_uri())
    monkeypatch.setattr(files, "RAM_MIRRORS", ())
    with pytest.raises(ModelNotFoundError, match=r"ram_swin_large_14m.pth: checksum mismatch .*expected 15c729c793af"):
        resolve_extractor_files("ram")
    assert KNOWN_SHA256["DAPE.pth"].startswith("a7028be2") and KNOWN_SHA256["osediff.pkl"] is None


def test_extractor_metadata_and_local_files(tmp_path, caches):
    assert [extractor_needs_model(n) for n in ("dape", "ram", "caption", "text", "none")] == [True] * 3 + [False] * 2
    assert resolve_extractor_files("text") == {}
    ram, dape = tmp_path / "ram.pth", tmp_path / "dape.pth"
    ram.write_bytes(b"r")
    dape.write_bytes(b"d")
    (tmp_path / "ram_tag_list.txt").write_text("a\n")
    (tmp_path / "ram_tag_list_threshold.txt").write_text("0.5\n")
    found = resolve_extractor_files("dape", ram=ram, dape=dape, ram_tags=tmp_path)
    assert found == {"ram_path": ram, "dape_path": dape, "tags_path": tmp_path / "ram_tag_list.txt",
                     "thresholds_path": tmp_path / "ram_tag_list_threshold.txt"}
    assert resolve_extractor_files("caption", captioner=tmp_path) == {"model": tmp_path}
    with pytest.raises(OSEDiffError, match="'dapee'"):
        resolve_extractor_files("dapee")


def test_finding_files_imports_no_torch():
    """A missing file is reported before the heavy imports (torch alone takes seconds to import)."""
    import subprocess
    import sys

    code = ("import sys; from osediff.checkpoint import ModelNotFoundError, resolve_base, resolve_file; "
            "from osediff.prompts import resolve_extractor_files; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_error_keeps_both_wordings_across_processes():
    import pickle

    err = pickle.loads(pickle.dumps(ModelNotFoundError(MissingFile("osediff.pkl", "file not found",
                                                                   hub.WEIGHTS_OPTION))))
    assert str(err) == "osediff.pkl: file not found; pass weights=<path to osediff.pkl>"
    assert err.message(flag_for) == "osediff.pkl: file not found; pass --weights <path to osediff.pkl>"
    assert err.reason == "osediff.pkl: file not found" and err.options == (hub.WEIGHTS_OPTION,)
    assert err.argument == "weights" and isinstance(err, RuntimeError)
    merged = ModelNotFoundError.merge([err, _offline("DAPE.pth", files.DAPE_OPTION)], subject="model files")
    again = pickle.loads(pickle.dumps(merged))
    assert type(again) is ModelNotFoundError and again.misses == merged.misses and str(again) == str(merged)
    assert again.message(flag_for) == merged.message(flag_for) and again.subject == "model files"
    legacy = pickle.loads(pickle.dumps(ModelNotFoundError("RAM weights: unreadable", hub.BASE_OPTION)))
    assert legacy.reason == "RAM weights: unreadable" and str(legacy).endswith("pass base=<diffusers folder or hub id>")


def _offline(what: str, option: Option) -> ModelNotFoundError:
    return ModelNotFoundError(MissingFile(what, "not in the local cache (offline mode)", option, network=True))


def test_merged_errors_group_files_by_reason_and_list_each_option_once():
    base = ModelNotFoundError(MissingFile("sd21", "folder not found", hub.BASE_OPTION))
    ram = _offline("ram_swin_large_14m.pth", files.RAM_OPTION)
    dape = ModelNotFoundError.merge([_offline("DAPE.pth", files.DAPE_OPTION), ram], subject="DAPE prompts")
    assert dape.reason == "DAPE prompts: DAPE.pth, ram_swin_large_14m.pth: not in the local cache (offline mode)"
    merged = ModelNotFoundError.merge([base, dape, ram])  # ram twice: listed once
    assert merged.subject is None  # the parts' subjects differ: each file is named instead
    assert merged.reason == ("sd21: folder not found; DAPE.pth, ram_swin_large_14m.pth: not in the local cache "
                             "(offline mode)")
    assert str(merged) == merged.reason + ("; pass base=<diffusers folder or hub id>, dape_path=<DAPE.pth>, "
                                           "ram_path=<ram_swin_large_14m.pth>")
    assert merged.message(flag_for) == merged.reason + ("; pass --base <diffusers folder or hub id> "
                                                        "--dape <DAPE.pth> --ram <ram_swin_large_14m.pth>")
    assert merged.argument is None and not merged.network and dape.network
    assert "\n" not in merged.message(flag_for)
    assert ModelNotFoundError.merge([dape]).subject == "DAPE prompts"  # a shared subject is kept
    with pytest.raises(ValueError):
        ModelNotFoundError.merge([])


def test_a_local_miss_is_looked_up_again(tmp_path, caches, tiny_base_dir, monkeypatch):
    """A folder or file created after a first failure is found by the next call (the demo, a notebook)."""
    import shutil

    base = tmp_path / "sd21"
    with pytest.raises(ModelNotFoundError, match="folder not found"):
        resolve_base(base)
    shutil.copytree(tiny_base_dir, base)
    assert resolve_base(base) == base
    weights = tmp_path / "osediff.pkl"
    with pytest.raises(ModelNotFoundError, match="file not found"):
        resolve_file(weights, option=hub.WEIGHTS_OPTION)
    weights.write_bytes(b"w")
    assert resolve_file(weights, option=hub.WEIGHTS_OPTION) == weights


def test_a_network_failure_is_remembered_for_a_while(caches, no_network, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(network, "_now", lambda: clock[0])
    with pytest.raises(ModelNotFoundError, match="the hub could not be reached") as first:
        resolve_file("hf://owner/repo/model.pth")
    assert first.value.network and len(no_network) == 1
    clock[0] += network.FAILURE_TTL_S - 1
    with pytest.raises(ModelNotFoundError) as again:  # at once: no probe, no lookup
        resolve_file("hf://owner/repo/model.pth")
    assert again.value is first.value and len(no_network) == 1
    clock[0] += 2  # expired: the host is probed again, and the lookup runs again
    with pytest.raises(ModelNotFoundError) as later:
        resolve_file("hf://owner/repo/model.pth")
    assert later.value is not first.value and len(no_network) == 2


def test_offline_download_fails_fast_in_one_line_and_writes_nothing(tmp_path, caches, no_network):
    from osediff.checkpoint import store

    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        store.download("osediff", ["dape"], to=tmp_path / "models")
    assert time.perf_counter() - started < 1.0
    message = info.value.message(flag_for)
    assert "\n" not in message and message.startswith(f"not downloaded into {tmp_path / 'models'}: ")
    assert "base, prompts/ram_swin_large_14m.pth: the hub could not be reached" in message
    assert "weights/osediff.pkl, prompts/DAPE.pth: neither the hub nor github.com could be reached" in message
    assert info.value.network
    # the same one probe per host as every lookup (hub, github.com, raw.githubusercontent.com), no other connection
    assert len(no_network) == len(set(no_network)) == 3 and not caches
    assert not (tmp_path / "models").exists()
