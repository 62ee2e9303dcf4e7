"""Tests of launch/inspect_model.py (the model summary tool)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from configs import celebahq
import train_helpers as th

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO / "launch" / "inspect_model.py"
REFERENCE_LINE = ("trainable parameters: encoder=5867584 sampler=1049600 "
                  "decoder=4040556 discriminator=411075")


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def tool():
  return _load("inspect_model_under_test", TOOL)


@pytest.fixture(scope="module")
def config_module():
  return celebahq


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(TOOL), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=th.PATIENCE,
                        check=False)


def test_reference_summary_in_process(tool, config_module):
  lines = tool.summarize(config_module.get_config("reference"))
  assert lines[-1] == REFERENCE_LINE
  text = "\n".join(lines)
  assert "features [B, 4, 4, 64]" in text
  assert "mu, logvar, z [B, 512]" in text
  assert "image [B, 256, 256, 3]" in text
  assert "logits [B, 32, 32, 1]" in text
  assert "10,957,740" in text  # The VAE total.
  assert tool.parse_counts_line(text) == {
      "encoder": 5_867_584, "sampler": 1_049_600, "decoder": 4_040_556,
      "discriminator": 411_075}


def test_paper_preset_reports_running_statistics(tool, config_module):
  lines = tool.summarize(config_module.get_config())
  # The paper preset leaves the logits unnormalized (final_norm=False).
  assert lines[-1] == REFERENCE_LINE.replace("411075", "411073")
  assert "vae=24,326 discriminator=1,024" in "\n".join(lines)


def test_parse_counts_line_needs_the_line(tool):
  with pytest.raises(ValueError, match="trainable parameters:"):
    tool.parse_counts_line("nothing here")


def test_command_line_with_override(tool):
  result = _run("--config=configs/celebahq.py:test",
                "--config.model.latent_dim=64")
  assert result.returncode == 0, result.stderr
  last = result.stdout.strip().splitlines()[-1]
  counts = tool.parse_counts_line(last)
  # test variant: 32 / 2**3 = 4; the heads read 4 * 4 * 8 = 128 features.
  assert counts["sampler"] == 2 * (128 * 64 + 64)
  assert "mu, logvar, z [B, 64]" in result.stdout
  assert last == tool.counts_line(counts)


def test_command_line_rejects_a_bad_config():
  result = _run("--config=configs/celebahq.py", "--config.model.resolution=48")
  assert result.returncode != 0
  assert "model.resolution=48" in result.stderr
  assert "power of two" in result.stderr
  assert "trainable parameters:" not in result.stdout
