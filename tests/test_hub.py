"""Checkpoints from the Hugging Face Hub (bfncli.hub), against a stand-in Hub on 127.0.0.1 (hub_server).

Each test gets an empty HF_HOME and HF_ENDPOINT pointing at the stand-in; the commands run as
subprocesses, so huggingface_hub reads these variables exactly as it does for a user. Commands that
fail before a model is built never import torch, which keeps most of these tests around a second.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CONFORMANCE, assert_one_line_error, run_bfn
from hub_server import FakeHub, Repo, commit_hash
from safetensors.torch import load_file, save, save_file

from bfncli import __version__
from bfncli.checkpoint import save_checkpoint
from bfncli.config import resolve_config
from bfncli.errors import UserError
from bfncli.hub import HubFile, parse_spec
from bfncli.specs import converted

OFFICIAL = "rupspace/pretrained-BFNs"
FIRST, SECOND, THIRD = commit_hash("first"), commit_hash("second"), commit_hash("third")


@pytest.fixture(autouse=True)
def _no_hub_settings_of_the_user(monkeypatch):
    """The user's own HF_* settings (a token, another cache, offline mode) must not reach the tests."""
    for key in list(os.environ):
        if key.startswith(("HF_", "HUGGING_FACE_")) or key == "TRANSFORMERS_OFFLINE":
            monkeypatch.delenv(key)


@pytest.fixture
def hub():
    with FakeHub({}) as server:
        yield server


def env_for(hub, home: Path, **more) -> dict:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), **more}


def resolve(spec: str, env: dict) -> Path:
    """bfncli.hub.local_checkpoint in a fresh process (huggingface_hub reads its settings at import)."""
    script = "import sys; from bfncli.specs import local_checkpoint; print(local_checkpoint(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", script, spec], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def bfn_without_pauses(*args, env: dict):
    """The real CLI, minus the pauses between the client's retries (a second, then longer; they only wait)."""
    script = "import time; time.sleep = lambda seconds: None; from bfncli.cli import main; main()"
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def st(tag: str, size: int = 4) -> bytes:
    """A small, whole safetensors file, told apart by its tag."""
    return save({"w": torch.arange(size, dtype=torch.float32)}, metadata={"tag": tag})


def assert_last_line_error(result, *needles, code=2):
    """A one-line error after notes on stderr (a cached copy used, a download repeated)."""
    assert result.returncode == code and "Traceback" not in result.stderr, (result.returncode, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert all(needle in last for needle in needles), last


def requests_made(hub) -> list:
    """What the client asked the Hub for (its once-a-day look-up of agent names aside)."""
    return [r for r in hub.requests if r[1] != "/api/agent-harnesses"]


# ------------------------------------------------------------------------------ the grammar
@pytest.mark.parametrize("spec, repo, path, revision", [
    ("hf://rupspace/pretrained-BFNs/mnist_ema.pt", OFFICIAL, "mnist_ema.pt", None),
    ("hf://me/my-bfn@refs/pr/1/runs/a/model.safetensors", "me/my-bfn", "runs/a/model.safetensors", "refs/pr/1"),
    (f"hf://me/my.bfn@{FIRST}/x.pt", "me/my.bfn", "x.pt", FIRST),
    ("hf://me/r/w@2.safetensors", "me/r", "w@2.safetensors", None),  # an '@' in a file name is the file's
    ("hf://me/r@feature%2Fx/m.pt", "me/r", "m.pt", "feature/x"),
    ("https://huggingface.co/rupspace/pretrained-BFNs/blob/main/mnist_ema.pt", OFFICIAL, "mnist_ema.pt", "main"),
    ("https://huggingface.co/me/r/resolve/v1/a/m.pt?download=true", "me/r", "a/m.pt", "v1"),
    ("official:text8", OFFICIAL, "text8_ema.pt", None),
    ("official:cifar10-16c@v1", OFFICIAL, "cifar10_16c_ema.pt", "v1"),
])
def test_specs_name_a_repository_file_and_revision(spec, repo, path, revision):
    assert parse_spec(spec) == HubFile(spec, repo, path, revision)


@pytest.mark.parametrize("spec, needle", [
    ("hf://only-owner", "needs an owner, a repository and a file"),
    ("hf://owner/repo", "names the repository owner/repo but no file in it"),
    ("hf://owner/repo/config.yaml", "is not a checkpoint"),
    ("hf://owner/repo/../x.pt", "not a file path inside the repository"),
    ("hf://owner/repo@/x.pt", "Empty revision after '@'"),
    ("hf://owner/repo/x.pt@", "the revision '' is not a branch, a tag or a commit hash (it is empty"),
    ("official:nope", "official:mnist, official:cifar10-256d"),
    ("official:mnist@", "write official:NAME@REVISION"),
    ("hf://buckets/owner/b/x.pt", "it names a bucket"),
    ("https://example.com/owner/repo/x.pt", "is not the address of a file on the Hub"),
    # item 12: which part is invalid
    ("hf://a b/c/d.pt", "the owner 'a b' is not a valid Hub name"),
    ("hf://ëlise/c/d.pt", "the owner 'ëlise' is not a valid Hub name (ASCII letters"),
    ("hf://a/répo/d.pt", "the repository name 'répo' is not a valid Hub name"),
    ("hf://a/c/x\\y.pt", "folders are separated by '/'"),
    ("hf://a/c/x\ny.pt", "it contains a control character"),
    # item 15, and bfn's earlier FILE@REVISION: refused with the spelling that means it
    ("hf://o/r@main@v2/x.pt", "the revision 'main@v2' is not a branch, a tag or a commit hash (it contains '@'"),
    ("hf://o/r/x.pt@main@v2", "the revision 'main@v2' is not a branch, a tag or a commit hash (it contains '@'"),
    ("hf://o/r/x.pt@v2", "names a file called 'x.pt@v2'; the revision goes right after the repository: write "
                         "hf://o/r@v2/x.pt"),
    ("hf://o/r/m/x.pt@feature/y", "write hf://o/r@feature%2Fy/m/x.pt"),
    ("hf://o/r@v1/x.pt@v2", "it names two revisions ('v1' and 'v2')"),
])
def test_malformed_specs_say_how_to_write_them(spec, needle):
    with pytest.raises(UserError) as err:
        parse_spec(spec)
    assert needle in str(err.value) and err.value.exit_code == 2 and "\n" not in str(err.value)


def test_a_plain_path_is_not_a_hub_spec_and_stays_off_the_network():
    assert parse_spec("runs/x/checkpoints/step-00000010/model.safetensors") is None
    script = ("import sys; from bfncli.specs import local_checkpoint; p = local_checkpoint('a/b.safetensors'); "
              "assert str(p) == 'a/b.safetensors' and 'huggingface_hub' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == 0


@pytest.mark.parametrize("spec", ["hf://only-owner", "official:nope"])
def test_bad_specs_through_the_cli(spec, tmp_path, hub):
    assert_one_line_error(run_bfn("eval", "--checkpoint", spec, env=env_for(hub, tmp_path)), spec)
    assert hub.requests == []


# --------------------------------------------------------------- the released weights, end to end
@pytest.fixture(scope="module")
def released_mnist(tmp_path_factory) -> bytes:
    """An official-format mnist_ema.pt with the mnist preset's exact tensors (random weights): the
    conformance fixtures are smaller networks, which no preset (hence no official:NAME) fits."""
    keys = json.loads((CONFORMANCE / "manifests.json").read_text())["mnist_discrete"]["keys"]
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("released") / "mnist_ema.pt"
    torch.save({key: torch.randn(shape, generator=g) * 0.02 for key, shape in keys.items()}, path)
    return path.read_bytes()


def test_official_weights_download_convert_and_evaluate_then_cost_nothing(hub, tmp_path, released_mnist):
    hub.repos[OFFICIAL] = Repo({FIRST: {"mnist_ema.pt": released_mnist}}, {"main": FIRST})
    env = env_for(hub, tmp_path / "hf")
    data = tmp_path / "data.safetensors"
    save_file({"data": torch.randint(0, 2, (2, 28, 28, 1), generator=torch.Generator().manual_seed(1))}, str(data))

    first = run_bfn("eval", "--checkpoint", "official:mnist", "--data", data, "--steps", 0, "--repeats", 1, "--json",
                    env=env)
    assert first.returncode == 0, first.stderr
    assert "recognised as preset 'mnist'" in first.stderr
    snapshot = tmp_path / "hf" / "hub" / "models--rupspace--pretrained-BFNs" / "snapshots" / FIRST
    bfn_file = snapshot / f"mnist_ema.pt.bfn-{__version__}.safetensors"
    report = json.loads(first.stdout)
    assert report["checkpoint"] == str(bfn_file) and math.isfinite(report["total_mean"])
    assert sorted(p.name for p in snapshot.iterdir()) == ["mnist_ema.pt", bfn_file.name]  # nothing half-written

    hub.requests.clear()  # the second time: what eval/sample/train call, in a fresh process
    assert resolve("official:mnist", env) == bfn_file
    assert hub.requests == []  # not one request: the converted file is found in the cache


def test_sample_takes_specs_too(hub, tmp_path):
    env = env_for(hub, tmp_path)
    assert_one_line_error(run_bfn("sample", "--checkpoint", "official:nope", env=env), "bfn sample:", "official:nope")


def test_convert_takes_a_spec_and_writes_into_the_current_folder(hub, tmp_path):
    fixture = CONFORMANCE / "mnist" / "official_ema.pt"
    hub.repos["someone/small-bfns"] = Repo({FIRST: {"mnist/small_ema.pt": fixture.read_bytes()}}, {"main": FIRST})
    result = run_bfn("convert", "hf://someone/small-bfns/mnist/small_ema.pt", "--official-config",
                     CONFORMANCE / "mnist" / "official_config.yaml", env=env_for(hub, tmp_path / "hf"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    converted = load_file(str(tmp_path / "small_ema.safetensors"))
    original = torch.load(fixture, weights_only=True)
    assert converted.keys() == {k.removeprefix("net.") for k in original}
    assert all(torch.equal(converted[k.removeprefix("net.")], v) for k, v in original.items())


def _downloaded(tmp_path, name: str, content: bytes) -> tuple[HubFile, Path]:
    """A file as hf_hub_download leaves it in the cache, for the conversion step on its own."""
    path = tmp_path / "hub" / "models--someone--weights" / "snapshots" / FIRST / name
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return HubFile(f"hf://someone/weights/{name}", "someone/weights", name, None), path


def test_weights_no_preset_fits_are_refused_with_the_way_to_convert_them(tmp_path):
    fixture = (CONFORMANCE / "mnist" / "official_ema.pt").read_bytes()  # a smaller network than the preset's
    hub_file, download = _downloaded(tmp_path, "mnist_ema.pt", fixture)
    with pytest.raises(UserError) as err:
        converted(hub_file, download)
    message = str(err.value)
    assert message.startswith(f"cannot convert {hub_file.spec} on the fly: the weights fit none of the paper presets")
    assert f"bfn convert {hub_file.spec} -o model.safetensors with --preset NAME or --official-config" in message
    assert err.value.exit_code == 2 and "\n" not in message
    assert sorted(p.name for p in download.parent.iterdir()) == ["mnist_ema.pt"]  # nothing half-written


def test_a_pickle_that_needs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "the-pickle-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"net.weight": Payload()}, evil)
    hub_file, download = _downloaded(tmp_path, "text8_ema.pt", evil.read_bytes())
    with pytest.raises(UserError, match="needs arbitrary code to load") as err:
        converted(hub_file, download)
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
    assert not marker.exists()
    assert sorted(p.name for p in download.parent.iterdir()) == ["text8_ema.pt"]


# -------------------------------------------------------------------------------- revisions
def test_revisions_pinned_by_commit_named_by_branch_or_left_to_the_cache(hub, tmp_path):
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("first")}, SECOND: {"m.safetensors": st("second")},
                                THIRD: {"m.safetensors": st("third")}}, {"main": SECOND, "v1": FIRST})
    env = env_for(hub, tmp_path / "hf")
    spec = f"hf://{OFFICIAL}/m.safetensors"
    at = f"hf://{OFFICIAL}@{{}}/m.safetensors".format
    assert resolve(at(FIRST), env).read_bytes() == st("first")
    assert resolve(at("v1"), env).read_bytes() == st("first")  # a tag: asked, and found in the cache
    assert resolve(spec, env).read_bytes() == st("second")

    hub.repos[OFFICIAL].refs["main"] = THIRD  # a new release
    hub.requests.clear()
    assert resolve(spec, env).read_bytes() == st("second")  # no revision: the cached copy, no request
    assert resolve(at(FIRST), env).read_bytes() == st("first")  # a commit never changes
    assert requests_made(hub) == []
    assert resolve(at("main"), env).read_bytes() == st("third")  # naming the branch asks the server
    assert requests_made(hub)
    hub.requests.clear()
    assert resolve(spec, env).read_bytes() == st("third") and requests_made(hub) == []


# ------------------------------------------------------------------------------ offline use
def test_offline_serves_the_cache_and_says_what_to_do_without_it(hub, tmp_path):
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("weights")}}, {"main": FIRST})
    env = env_for(hub, tmp_path / "hf")
    resolve(f"hf://{OFFICIAL}/m.safetensors", env)
    hub.requests.clear()
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    assert resolve(f"hf://{OFFICIAL}@main/m.safetensors", offline).read_bytes() == st("weights")
    result = run_bfn("eval", "--checkpoint", "official:mnist", env=offline)
    assert_one_line_error(result, "HF_HUB_OFFLINE", f"{hub.url}/{OFFICIAL}/resolve/main/mnist_ema.pt",
                          str(tmp_path / "hf" / "hub"), "bfn convert mnist_ema.pt -o mnist_ema.safetensors", code=1)
    assert hub.requests == []


def test_an_unreachable_hub_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = bfn_without_pauses("eval", "--checkpoint", "official:text8",
                                env={"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf")})
    # The client's retry notices are not shown: one line, after its retries.
    assert_one_line_error(result, "cannot download official:text8", "Connection refused",
                          f"127.0.0.1:{port}/{OFFICIAL}/resolve/main/text8_ema.pt", code=1)


def test_a_host_that_does_not_resolve_fails_at_once_unless_the_cache_has_the_file(hub, tmp_path):
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("weights")}}, {"main": FIRST})
    env = env_for(hub, tmp_path / "hf")
    resolve(f"hf://{OFFICIAL}/m.safetensors", env)
    nowhere = {**env, "HF_ENDPOINT": "http://no-such-host.invalid"}  # .invalid never resolves (RFC 2606)
    # A branch asks the server; unreachable, the cached copy of that branch serves.
    assert resolve(f"hf://{OFFICIAL}@main/m.safetensors", nowhere).read_bytes() == st("weights")
    start = time.perf_counter()
    result = run_bfn("eval", "--checkpoint", "official:text8", env=nowhere)
    assert time.perf_counter() - start < 20  # no retries: the client's five take about 25 s
    assert_one_line_error(result, "cannot download official:text8", "no-such-host.invalid does not resolve",
                          "no network, or a wrong HF_ENDPOINT", "bfn convert text8_ema.pt", code=1)


# ------------------------------------------------------------------------- server's answers
@pytest.fixture
def answers(hub):
    hub.repos[OFFICIAL] = Repo({FIRST: {"mnist_ema.pt": b"x"}}, {"main": FIRST})
    hub.repos["acme/private"] = Repo({FIRST: {"m.safetensors": st("secret weights")}}, {"main": FIRST},
                                     token="hf_s3cret")
    hub.repos["acme/gated"] = Repo({FIRST: {"m.safetensors": b"x"}}, {"main": FIRST}, gated=True)
    return hub


@pytest.mark.parametrize("spec, needles", [
    (f"hf://{OFFICIAL}/nope.pt", ["has no file 'nope.pt' at revision main"]),
    ("hf://nobody/nothing/x.pt", ["there is no repository nobody/nothing", "HF_TOKEN"]),
    (f"hf://{OFFICIAL}@no-such-branch/mnist_ema.pt", ["has no revision 'no-such-branch'"]),
    ("hf://acme/private/m.safetensors", ["there is no repository acme/private", "HF_TOKEN"]),  # 401, as the Hub says
    ("hf://acme/gated/m.safetensors", ["is gated", "HF_TOKEN"]),
])
def test_server_refusals_are_one_line(answers, tmp_path, spec, needles):
    assert_one_line_error(run_bfn("eval", "--checkpoint", spec, env=env_for(answers, tmp_path)), spec, *needles,
                          code=1)


def test_hf_token_opens_a_private_repository(answers, tmp_path):
    env = env_for(answers, tmp_path, HF_TOKEN="hf_s3cret")
    assert resolve("hf://acme/private/m.safetensors", env).read_bytes() == st("secret weights")


def test_a_truncated_download_is_refused_and_leaves_nothing(hub, tmp_path):
    weights = st("big", size=25_600)
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": weights}}, {"main": FIRST})
    hub.cut_at["m.safetensors"] = 40_000  # every transfer stops there, though all bytes are announced
    result = bfn_without_pauses("eval", "--checkpoint", f"hf://{OFFICIAL}/m.safetensors",
                                env=env_for(hub, tmp_path / "hf"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bfn eval: the download of") and "broke off" in last, last
    assert f"{hub.url}/{OFFICIAL}/resolve/main/m.safetensors" in last
    assert [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and "blobs" in p.parts] == []


def test_a_dropped_connection_resumes_where_it_stopped(hub, tmp_path):
    weights = st("big", size=25_600)
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": weights}}, {"main": FIRST})
    hub.cut_once["m.safetensors"] = 40_000
    env = env_for(hub, tmp_path / "hf")
    script = ("import sys, time; time.sleep = lambda seconds: None; from bfncli.specs import local_checkpoint; "
              "print(local_checkpoint(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", script, f"hf://{OFFICIAL}/m.safetensors"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).read_bytes() == weights
    assert len([r for r in hub.requests if r[0] == "GET" and r[1].startswith("/blobs/")]) == 2  # cut, then resumed


# ------------------------------------------------------------------------------ fine-tuning
@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    """A bfn checkpoint of the embedded default preset's network, with weights the run would not draw."""
    from bfncli.model import BFN

    cfg = resolve_config("default", environ={})
    torch.manual_seed(1234)
    return save_checkpoint(tmp_path / "small.safetensors", BFN(cfg).net.state_dict(), cfg, "ema", step=77)


def test_train_init_starts_from_downloaded_weights(hub, tmp_path, small_checkpoint):
    hub.repos["someone/digits-bfn"] = Repo({FIRST: {"model.safetensors": small_checkpoint.read_bytes()}},
                                           {"main": FIRST})
    spec = "hf://someone/digits-bfn/model.safetensors"
    result = run_bfn("train", "--preset", "default", "--init", spec, "--max-steps", 2, "--run-name", "ft",
                     "--runs-dir", tmp_path / "runs", "--set", "train.batch_size=8", "--set", "optim.lr=1e-12",
                     env=env_for(hub, tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert f"starting from the weights of {spec}" in result.stderr
    run = tmp_path / "runs" / "ft"
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["init"] == spec
    assert "/snapshots/" in first["init_checkpoint"] and first["init_checkpoint"].endswith("model.safetensors")
    start = load_file(str(small_checkpoint))
    state = load_file(str(run / "checkpoints" / "step-00000002" / "state.safetensors"))
    for name, tensor in start.items():  # a learning rate of ~0: raw weights and EMA still the initial ones
        torch.testing.assert_close(state[f"model.{name}"], tensor, rtol=0, atol=1e-6)
        torch.testing.assert_close(state[f"ema.{name}"], tensor, rtol=0, atol=1e-6)
    steps = [v.item() for k, v in state.items() if k.startswith("optim.") and k.endswith(".step")]
    assert steps and set(steps) == {2}  # a fresh optimizer: two steps taken, all in this run


def test_train_init_that_does_not_fit_names_the_mismatch_and_the_preset(small_checkpoint):
    from bfncli.jobs.initial_weights import load_initial_weights

    with pytest.raises(UserError) as err:
        load_initial_weights(str(small_checkpoint), resolve_config("mnist-tiny", environ={}), "mnist-tiny", False)
    message = str(err.value)
    assert "does not fit this run's network" in message and "wrong shape" in message
    assert message.endswith("use --preset default")


def test_train_init_and_resume_exclude_each_other():
    from bfncli.jobs.train import run_training

    with pytest.raises(UserError, match="--init starts a new run .* --resume continues"):
        run_training(resolve_config("default", environ={}), init="official:mnist", resume="auto")


# ------------------------------------------------------- the Hub's own spelling, end to end
def test_a_hub_address_and_other_repository_kinds_download_too(hub, tmp_path):
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("model")}}, {"main": FIRST})
    hub.repos["me/data"] = Repo({FIRST: {"d/m.safetensors": st("dataset")}}, {"v1": FIRST})
    env = env_for(hub, tmp_path / "hf")
    # a file's page on the Hub (here the stand-in HF_ENDPOINT names), as copied from the browser
    assert resolve(f"{hub.url}/{OFFICIAL}/blob/main/m.safetensors", env).read_bytes() == st("model")
    path = resolve("hf://datasets/me/data@v1/d/m.safetensors", env)
    assert path.read_bytes() == st("dataset") and "datasets--me--data" in path.parts


# ------------------------------------------------- a hostile server never writes outside the cache
@pytest.mark.parametrize("spec", [
    "hf://ok/r/model.safetensors@../../../../victim.txt",  # bfn's earlier spelling
    "hf://ok/r@..%2F..%2F..%2F..%2Fvictim.txt/model.safetensors",  # the Hub's, with the '/' encoded
    "official:mnist@../../../../victim.txt",
])
def test_a_revision_that_climbs_out_of_the_cache_is_refused_before_any_request(hub, tmp_path, spec):
    """Issue 16 item 1: the client writes refs/REVISION; here that would be tmp_path/victim.txt."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for repo in ("ok/r", OFFICIAL):
        hub.repos[repo] = Repo({FIRST: {"model.safetensors": st("x"), "mnist_ema.pt": b"x"}},
                               {"main": FIRST, "../../../../victim.txt": FIRST})
    result = run_bfn("sample", "--checkpoint", spec, env=env_for(hub, tmp_path / "hf"))
    assert_one_line_error(result, "the revision '../../../../victim.txt' is not a branch, a tag or a commit hash",
                          "contains '..'")
    assert hub.requests == [] and victim.read_text() == "precious"


def _files_outside(home: Path) -> list:
    return [p for p in home.rglob("*") if p.is_file() and (home / "hub") not in p.parents]


@pytest.mark.parametrize("what, needle", [("etag", "the ETag"), ("commit", "the commit")])
def test_server_answers_that_name_paths_outside_the_cache_are_refused(hub, tmp_path, what, needle):
    """Issue 16 item 2: blobs/ETAG and snapshots/COMMIT are built from the server's answer."""
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("x")}}, {"main": FIRST})
    if what == "etag":
        hub.etag["m.safetensors"] = '"../../../escaped"'  # blobs/../../../escaped: HF_HOME/escaped
    else:
        hub.commit = "../../../escaped"
    home = tmp_path / "hf"
    result = run_bfn("eval", "--checkpoint", f"hf://{OFFICIAL}/m.safetensors", env=env_for(hub, home))
    assert_one_line_error(result, f"answered {needle} '", "../../../escaped",
                          "would put the download outside the download cache", "refused before anything was written",
                          code=1)
    assert _files_outside(home) == [] and not (home / "escaped").exists()
    assert not [r for r in hub.requests if r[1].startswith("/blobs/")]  # refused before the transfer


def test_the_files_a_download_produces_must_lie_in_the_cache(hub, tmp_path, monkeypatch):
    """The last line of defence: whatever the client returns is checked to lie inside the cache."""
    import huggingface_hub
    from huggingface_hub import constants

    from bfncli import hub as hub_module

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(st("x"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(outside))
    monkeypatch.setattr(hub_module, "_check_the_server_has_an_address", lambda hub_file: None)
    with pytest.raises(UserError, match="outside the download cache") as err:
        hub_module.download(parse_spec("hf://o/r/m.safetensors"))
    assert err.value.exit_code == 1


# ------------------------------------------------------------ servers that never answer
def test_a_hub_that_accepts_and_never_answers_is_given_up_on(tmp_path):
    """Issue 16 item 6: connect and read waits are bounded, and a silent host is not asked forever."""
    with FakeHub({}, silent=True) as silent:
        env = {**env_for(silent, tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1"}
        start = time.perf_counter()
        result = bfn_without_pauses("eval", "--checkpoint", "official:text8", env=env)
        took = time.perf_counter() - start
    assert_one_line_error(result, "cannot download official:text8", f"{silent.url} did not answer (3 tries, 1 s each)",
                          "HF_HUB_ETAG_TIMEOUT", code=1)
    assert took < 20, took


def test_a_transfer_that_stalls_is_given_up_on(hub, tmp_path):
    """The file's bytes start, then stop: every read waits at most the timeout, and the client's own
    resumptions are bounded, so the command ends with one line instead of waiting forever."""
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("big", size=25_600)}}, {"main": FIRST})
    hub.stall.add("m.safetensors")
    env = {**env_for(hub, tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1"}
    start = time.perf_counter()
    result = bfn_without_pauses("eval", "--checkpoint", f"hf://{OFFICIAL}/m.safetensors", env=env)
    assert time.perf_counter() - start < 30
    assert_one_line_error(result, f"{hub.url}/{OFFICIAL}/resolve/main/m.safetensors broke off", code=1)


# --------------------------------------------------------------------------- HF_ENDPOINT
@pytest.mark.parametrize("endpoint, why", [
    ("garbage", "does not start with https:// or http://"),
    ("http://", "names no host"),
    ("ftp://mirror.example.org", "does not start with https:// or http://"),
    ("http://[::1", "Invalid IPv6 URL"),
])
def test_a_bad_hf_endpoint_is_named(tmp_path, endpoint, why):
    """Issue 16 items 7 and 12: the variable is named, not blamed on the download."""
    result = run_bfn("eval", "--checkpoint", "official:mnist", env={"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path)})
    assert_one_line_error(result, f"HF_ENDPOINT='{endpoint}' is not the address of a Hub", why,
                          "set it to one like https://huggingface.co, or unset it")


# ------------------------------------------------------------- damaged downloads in the cache
HTML = b"<!DOCTYPE html><html><body>Please sign in to the proxy</body></html>"


def test_a_damaged_cached_download_is_fetched_again_once(hub, tmp_path):
    """Issue 16 item 11: the cached copy was cut short on disk; the next run downloads it again."""
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("big", size=25_600)}}, {"main": FIRST})
    env = env_for(hub, tmp_path / "hf")
    path = resolve(f"hf://{OFFICIAL}/m.safetensors", env)
    blob = path.resolve()
    blob.write_bytes(blob.read_bytes()[:5000])
    hub.requests.clear()
    result = bfn_without_pauses("eval", "--checkpoint", f"hf://{OFFICIAL}/m.safetensors", "--steps", 0, "--repeats",
                                1, env=env)  # it then fails as it should: that file is no bfn checkpoint
    assert "the cached download" in result.stderr and "is damaged (it has 5,000 bytes where its header describes" \
        in result.stderr and "downloading it again" in result.stderr, result.stderr
    assert f"/{OFFICIAL}/resolve/{FIRST}/m.safetensors" in {r[1] for r in hub.requests}  # the same commit again
    assert path.read_bytes() == st("big", size=25_600)
    assert "is a safetensors file but not a bfn checkpoint" in result.stderr.strip().splitlines()[-1]


def test_an_html_page_instead_of_the_file_is_fetched_again_then_refused_and_removed(hub, tmp_path):
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("x"), "o.safetensors": st("y")}}, {"main": FIRST})
    hub.instead["m.safetensors"] = [HTML]  # once: a proxy's page, then the file
    env = env_for(hub, tmp_path / "hf")
    assert resolve(f"hf://{OFFICIAL}/m.safetensors", env).read_bytes() == st("x")

    hub.instead["o.safetensors"] = [HTML, HTML]  # every time
    result = bfn_without_pauses("eval", "--checkpoint", f"hf://{OFFICIAL}/o.safetensors", env=env)
    assert "downloading it again" in result.stderr
    assert_last_line_error(result, "is damaged (not a safetensors file", "twice in a row",
                          "it was removed from the download cache")
    assert not list((tmp_path / "hf" / "hub").rglob("o.safetensors"))


def test_a_file_whose_sha256_is_not_the_announced_one_is_refused(hub, tmp_path):
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("x")}}, {"main": FIRST})
    hub.etag["m.safetensors"] = '"' + "0" * 64 + '"'  # what the Hub says the file's sha256 is
    result = bfn_without_pauses("eval", "--checkpoint", f"hf://{OFFICIAL}/m.safetensors", env=env_for(hub, tmp_path))
    assert_last_line_error(result, "its SHA-256 is not the one the Hub announced", "twice in a row")


def test_offline_a_damaged_cached_download_says_how_to_remove_it(hub, tmp_path):
    hub.repos[OFFICIAL] = Repo({FIRST: {"m.safetensors": st("x")}}, {"main": FIRST})
    env = env_for(hub, tmp_path / "hf")
    resolve(f"hf://{OFFICIAL}/m.safetensors", env).resolve().write_bytes(HTML)
    result = run_bfn("eval", "--checkpoint", f"hf://{OFFICIAL}/m.safetensors", env={**env, "HF_HUB_OFFLINE": "1"})
    assert_last_line_error(result, "the cached download", "is damaged", "HF_HUB_OFFLINE=1 forbids downloading it again",
                          f"'hf cache rm hf://models/{OFFICIAL}/m.safetensors'")


def test_a_damaged_cached_conversion_is_converted_again(tmp_path):
    fixture = (CONFORMANCE / "mnist" / "official_ema.pt").read_bytes()
    hub_file, download = _downloaded(tmp_path, "mnist_ema.pt", fixture)
    target = download.with_name(f"mnist_ema.pt.bfn-{__version__}.safetensors")
    save_file({"w": torch.zeros(1000)}, str(target))
    target.write_bytes(target.read_bytes()[:-100])  # cut short
    with pytest.raises(UserError, match="cannot convert .* on the fly: the weights fit none of the paper presets"):
        converted(hub_file, download)  # it tried: the damaged file went, and conversion ran (and refused these)
    assert not target.exists()
