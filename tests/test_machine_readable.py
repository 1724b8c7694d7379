"""What scripts read: --json outputs, --version, exit codes that tell a mistyped flag (2) from a
missing or unreadable file (3), and help that shows no value for flags."""

import json

import pytest
from conftest import CONFORMANCE, assert_one_line_error, ckpt, run_bfn

from bfncli.errors import BAD_INPUT, USAGE


def test_version_says_what_a_bug_report_needs():
    text = run_bfn("--version")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["bfn", "python", "torch", "accelerate"]
    assert "CUDA" in lines[2]
    info = json.loads(run_bfn("--version", "--json").stdout)
    assert info["bfn"] == lines[0].split()[1] and info["torch"] and info["accelerate"]
    assert set(info) >= {"python", "platform", "cuda", "gpus"}
    assert json.loads(run_bfn("--json", "--version").stdout) == info


def test_the_preset_list_as_json(call):
    result = call("train", "--list-presets", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["default"] == "default" and "mnist" in listing["presets"] and "text8" in listing["presets"]
    assert all(isinstance(text, str) and text for text in listing["presets"].values())


def test_convert_says_what_it_wrote(call, tmp_path):
    out = tmp_path / "mnist.safetensors"
    mnist = CONFORMANCE / "mnist"
    result = call("convert", mnist / "official_ema.pt", "--official-config", mnist / "official_config.yaml", "-o", out,
                  "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["output"] == str(out) and record["layout"] == "bfn" and record["bytes"] == out.stat().st_size
    assert record["weights"] == "ema" and record["converted_from"] == "official_ema.pt"
    back = call("convert", out, "-o", tmp_path / "back.pt", "--json")
    assert json.loads(back.stdout)["layout"] == "official"


def test_sample_summary_as_json(call, runs, tmp_path):
    args = ["sample", "--checkpoint", ckpt(runs, "img"), "--shape", "3,8,8,1", "--steps", 2, "--seed", 5]
    result = call(*args, "-o", tmp_path / "s.safetensors", "--json", tmp_path / "summary.json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["output"] == str(tmp_path / "s.safetensors") and summary["samples"] == 3
    assert summary["shape"] == [3, 8, 8, 1] and summary["seed"] == 5 and summary["evaluations"] >= 2
    assert summary["sampler"] and summary["checkpoint"] == str(ckpt(runs, "img")) and summary["seconds"] > 0
    on_stdout = call(*args, "-o", tmp_path / "t.safetensors", "--json", "-")
    assert json.loads(on_stdout.stdout)["output"] == str(tmp_path / "t.safetensors")
    piped = run_bfn(*args, "--json", tmp_path / "p.json", text=False)  # samples on stdout, the summary in the file
    assert piped.returncode == 0 and piped.stdout and json.loads((tmp_path / "p.json").read_text())["output"] == "-"
    assert_one_line_error(call(*args, "--json", "-"), "--json - would mix the summary into the samples")
    assert_one_line_error(call(*args, "-o", tmp_path / "u.safetensors", "--json", tmp_path / "summary.json"),
                          "already exists", "--force")
    assert not (tmp_path / "u.safetensors").exists()  # refused before drawing anything


@pytest.mark.parametrize("argv,code", [
    (["sample", "--bogus"], USAGE),
    (["train", "--max-steps", "many"], USAGE),
    (["trian"], USAGE),
    (["sample", "--checkpoint", "missing.safetensors", "-o", "s.safetensors"], BAD_INPUT),
    (["render", "missing.safetensors"], BAD_INPUT),
    (["train", "--config", "missing.yaml", "--dry-run"], BAD_INPUT),
    (["convert", "missing.pt", "--preset", "mnist"], BAD_INPUT),
])
def test_a_mistyped_flag_and_a_missing_file_exit_differently(call, argv, code):
    assert (USAGE, BAD_INPUT) == (2, 3)  # the README's table of exit codes
    assert_one_line_error(call(*argv), code=code)


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["eval"], ["render"], ["convert"]])
def test_flags_show_no_value_in_help(command):
    result = run_bfn(*command, "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    assert "<bool>" not in result.stdout
    assert "-q" in result.stdout and "--verbose" in result.stdout
