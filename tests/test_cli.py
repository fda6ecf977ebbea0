"""The latent-residual command: help, listings, one-line errors with non-zero exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from latent_residual import attach_residual
from latent_residual.checkpoints import save_world_model
from latent_residual.residual import ResidualConfig
from latent_residual.workflow.cli.main import main
from latent_residual.workflow.cli.options import config_from_options


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "plugins" in out and "inspect" in out


def test_plugins_lists_backbones_and_envs_with_package_and_version(registry, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    gru_line = next(line for line in out.splitlines() if "gru-v0" in line)
    assert "lr-testplugin 0.3.0" in gru_line
    assert any("testplug/drift-v0" in line and "lr-testplugin 0.3.0" in line for line in out.splitlines())
    assert any("draw-v0" in line and "latent-residual" in line for line in out.splitlines())
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"gru-v0", "draw-v0"} <= {b["id"] for b in data["backbones"]}


def test_bad_input_gives_one_line_and_non_zero_exit(capsys, tmp_path):
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No such command" in err[0]
    assert main(["inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adapter.safetensors" in err[0]
    assert main(["plugins", "--bogus-flag"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_inspect_prints_adapter_and_checkpoint_metadata(gru_model, tmp_path, capsys):
    attach_residual(gru_model).save_pretrained(tmp_path / "adapter")
    assert main(["inspect", str(tmp_path / "adapter")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["backbone_id"] == "gru-v0"
    save_world_model(gru_model, tmp_path / "model")
    assert main(["inspect", str(tmp_path / "model")]) == 0
    assert json.loads(capsys.readouterr().out)["backbone_kwargs"] == {}


def test_console_script_runs_as_a_process():
    done = subprocess.run(
        [sys.executable, "-m", "latent_residual.workflow.cli.main", "nonsense"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_threads_option_sets_torch_threads_and_rejects_zero(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "2", "plugins", "--json"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert main(["--threads", "0", "plugins"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_an_empty_value_empties_a_tuple_option():
    # The demo's default residual reads the belief; '' must bring back the paper's inputs.
    assert config_from_options(ResidualConfig, {"extra_inputs": ("",)}).extra_inputs == ()
    assert config_from_options(ResidualConfig, {"extra_inputs": ("belief",)}).extra_inputs == ("belief",)
