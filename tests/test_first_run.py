"""First run with a network (issue 14, item 5): no weights in the cache and the hub reachable -> the
size and licence said, the weights fetched (resumably); offline -> the tiny stand-in and its banner.

The hub client is replaced at the edge: huggingface_hub's `snapshot_download`, `HfApi.model_info`
and `try_to_load_from_cache`, and the socket `hub_reachable` opens. No test touches the network.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.hf_api import RepoSibling

from instrument.generator import backends, download
from instrument.generator.errors import ModelNotFoundError
from instrument.generator.loading import OFFICIAL_REPO, resolve_checkpoint
from instrument.generator.tiny import build_tiny_checkpoint
from tests.conftest import endless

GB = 1_000_000_000
SIBLINGS = {
    OFFICIAL_REPO: [RepoSibling("config.json", 2_000), RepoSibling("tangoflux.safetensors", 2 * GB),
                    RepoSibling("vae.safetensors", GB // 2), RepoSibling("README.md", 9_000),
                    RepoSibling("tangoflux.ckpt", 5 * GB)],  # the last two: not what the loader needs
    download.TEXT_ENCODER_REPO: [RepoSibling("config.json", 1_000), RepoSibling("model.safetensors", GB // 2),
                                 RepoSibling("spiece.model", 800_000), RepoSibling("pytorch_model.bin", 3 * GB)],
}
EXPECTED_BYTES = 2_000 + 2 * GB + GB // 2 + 1_000 + GB // 2 + 800_000  # 3.0 GB


class FakeHub:
    """A hub that serves the tiny checkpoint as TangoFlux; `fail_first`: the first download of
    TangoFlux stops half-way, leaving an `.incomplete` blob as huggingface_hub does."""

    def __init__(self, cache: Path, fail_first: bool = False) -> None:
        self.cache, self.fail_first = cache, fail_first
        self.done: dict[str, Path] = {}
        self.downloads: list[dict[str, Any]] = []  # kwargs of every non-local snapshot_download
        self.infos: list[str] = []
        self.resumed = False

    def snapshot_download(self, repo_id: str, **kw: Any) -> str:
        if kw.get("local_files_only"):
            if repo_id in self.done:
                return str(self.done[repo_id])
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        self.downloads.append({"repo": repo_id, **kw})
        blob = self.cache / f"models--{repo_id.replace('/', '--')}" / "blobs" / "abc.incomplete"
        if self.fail_first:
            self.fail_first = False
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(b"x" * 1000)
            raise ConnectionError("Connection reset by peer")
        self.resumed = self.resumed or blob.exists()
        snap = self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "abc"
        if repo_id == OFFICIAL_REPO:
            build_tiny_checkpoint(snap)
        else:
            snap.mkdir(parents=True, exist_ok=True)
        self.done[repo_id] = snap
        return str(snap)

    def model_info(self, repo_id: str, *, files_metadata: bool = False, **kw: Any) -> SimpleNamespace:
        assert files_metadata, "sizes come from the hub's file metadata"
        self.infos.append(repo_id)
        return SimpleNamespace(sha="abc", siblings=SIBLINGS[repo_id], card_data={"license": "other"})

    def try_to_load_from_cache(self, repo_id: str, filename: str, **kw: Any) -> str | None:
        return str(self.done[repo_id] / filename) if repo_id in self.done else None


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub(tmp_path / "hf")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no copy of ours in local_models_dir
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", fake.try_to_load_from_cache)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda api, repo, **kw: fake.model_info(repo, **kw))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: SimpleNamespace(close=lambda: None))
    return fake


def _no_network(*args: object, **kw: object) -> object:
    raise OSError(101, "Network is unreachable")


def test_first_run_says_size_and_licence_then_fetches(hub: FakeHub, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        choice = backends.choose_model("auto")
    assert choice == backends.ModelChoice(OFFICIAL_REPO, False, False)
    said = [r.getMessage() for r in caplog.records if r.name == download.__name__ and r.levelno == logging.WARNING]
    assert len(said) == 1, caplog.text
    assert "3.0 GB" in said[0] and "6 files" in said[0], said[0]
    assert "non-commercial research use" in said[0] and OFFICIAL_REPO in said[0], said[0]
    assert [d["repo"] for d in hub.downloads] == [OFFICIAL_REPO, download.TEXT_ENCODER_REPO]
    assert hub.downloads[0]["allow_patterns"] == list(download.WEIGHT_PATTERNS)
    # what was fetched is what the worker then loads, from the cache only
    assert resolve_checkpoint(OFFICIAL_REPO).weights.is_file()
    # a second start finds it and asks the hub nothing
    n = len(hub.infos)
    assert backends.choose_model("auto").model == OFFICIAL_REPO and len(hub.infos) == n


def test_plan_counts_only_what_is_missing(hub: FakeHub) -> None:
    assert download.plan_repo(OFFICIAL_REPO, download.WEIGHT_PATTERNS).bytes == 2_000 + 2 * GB + GB // 2
    hub.done[OFFICIAL_REPO] = Path("/nowhere")  # the fake cache says: every file is here
    plan = download.plan_repo(OFFICIAL_REPO, download.WEIGHT_PATTERNS)
    assert (plan.files, plan.missing, plan.bytes, plan.licence) == (3, 0, 0, "other")


def test_an_interrupted_download_resumes_on_the_next_start(hub: FakeHub, caplog: pytest.LogCaptureFixture) -> None:
    hub.fail_first = True
    with caplog.at_level(logging.WARNING):
        first = backends.choose_model("auto")
    assert first.stand_in and first.model == "tiny"  # the set goes on, with the banner (build.py logs it)
    assert "Connection reset by peer" in caplog.text and "resumes the download" in caplog.text
    second = backends.choose_model("auto")
    assert second == backends.ModelChoice(OFFICIAL_REPO, False, False)
    tango = [d for d in hub.downloads if d["repo"] == OFFICIAL_REPO]
    assert len(tango) == 2 and hub.resumed
    assert tango[0]["cache_dir"] == tango[1]["cache_dir"]  # the same cache, where the partial file waits
    assert not any(d.get("force_download") for d in hub.downloads)


def test_tangoflux_asked_for_by_name_fails_in_one_line(hub: FakeHub) -> None:
    hub.fail_first = True
    with pytest.raises(ModelNotFoundError) as e:
        backends.choose_model("tangoflux")
    text = str(e.value)
    assert "\n" not in text and "Connection reset" in text and "resumes" in text and "--model tiny" in text


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no network"])
def test_offline_falls_back_to_the_tiny_model(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(socket, "create_connection", _no_network)
    assert backends.choose_model("auto") == backends.ModelChoice("tiny", False, True)
    assert hub.downloads == [] and hub.infos == []  # nothing asked of the hub
    with pytest.raises(ModelNotFoundError, match="--model tiny"):
        backends.choose_model("tangoflux")


def test_fetch_model_uses_the_same_first_run_download(hub: FakeHub) -> None:
    path = backends.fetch_model()
    assert path == hub.done[OFFICIAL_REPO] and len(hub.downloads) == 2


@pytest.mark.timeout(300)
def test_cli_offline_plays_the_stand_in_with_its_banner(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    r = endless("render", "--seconds", "1", "--slots", "1", "--steps", "1", "--out", str(tmp_path / "o.wav"),
                env=env, timeout=280)
    assert r.returncode == 0, r.stderr
    assert "TINY RANDOM-WEIGHT STAND-IN" in r.stderr and "first run: fetching" not in r.stderr
