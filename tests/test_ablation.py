"""The ablation: its table and verdict rules on made-up results, and
launch/ablation.py end to end on a tiny setting (the table's shape, not its
numbers)."""

import json
import subprocess
import sys

import pytest

import train_helpers as th
from mixvae.evaluation import ablation


def _result(l1=0.2, sharp=0.8, sigma=0.5, below=0.0, bimodal=0):
  return {"reconstruction": {"l1": l1},
          "sharpness": {"reconstruction_vs_data": sharp},
          "latents": {"sigma": {"quantiles": {"q50": sigma},
                                "fraction_below_0.01": below},
                      "bimodal_latents": bimodal, "active_units": 8}}


def _grid(**runs):
  """{run: [results per seed]} from {run: [kwargs per seed]}."""
  return {run: [_result(**kw) for kw in seeds] for run, seeds in runs.items()}


def _verdicts(results):
  return [c["verdict"] for c in ablation.summarize(results)["claims"]]


def test_welch_p():
  assert ablation.welch_p([1.0], [2.0, 3.0]) is None
  assert ablation.welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0
  assert ablation.welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0
  p = ablation.welch_p([1.0, 1.1, 0.9], [2.0, 2.2, 1.8])
  assert 0 < p < 0.01  # scipy: 0.0034.


def test_the_claims_follow_their_rules():
  sharp = [dict(sharp=0.9 + d, sigma=0.5 + d, bimodal=3) for d in
           (0, 0.01, -0.01)]
  blurred = [dict(sharp=0.5 + d, sigma=0.1 + d, bimodal=0) for d in
             (0, 0.01, -0.01)]
  results = _grid(paper=sharp, no_gan=blurred, no_kli=blurred, vae=blurred,
                  beta_vae=blurred)
  assert _verdicts(results) == ["supported"] * 4
  # Reversed: the baselines are sharper, have larger sigma, and the
  # paper's posteriors collapse and are never bimodal.
  collapsed = [dict(sharp=0.5 + d, sigma=0.005, below=0.2) for d in
               (0, 0.01, -0.01)]
  results = _grid(paper=collapsed, no_gan=sharp, no_kli=sharp, vae=sharp,
                  beta_vae=sharp)
  assert _verdicts(results) == ["not supported"] * 4
  # One seed: nothing can be significant.
  results = _grid(paper=sharp[:1], no_gan=blurred[:1], no_kli=blurred[:1],
                  vae=blurred[:1], beta_vae=blurred[:1])
  assert _verdicts(results) == ["inconclusive"] * 4
  summary = ablation.summarize(results)
  assert summary["runs"]["vae"]["reconstruction/l1"]["p_vs_paper"] is None


def test_markdown_table_shape():
  results = _grid(paper=[{}, {"l1": 0.3}], vae=[{}, {"sharp": 0.1}])
  summary = ablation.summarize(results)
  lines = ablation.markdown(summary).splitlines()
  header = lines[0].split(" | ")
  assert len(header) == 3 + len(ablation.METRICS)
  assert lines[2].startswith("| paper | the full method")
  assert "0.25 ± 0.071" in lines[2]  # L1: mean and std of 0.2, 0.3.
  assert "–" in lines[2]  # LPIPS: not in these results.
  assert ablation._cell({"mean": 318.26, "std": 12.3, "n": 3}) == "318 ± 12"
  assert ablation._cell({"mean": 1234.5, "std": 0.0, "n": 1}) == "1234"
  assert sum(line.startswith("- **") for line in lines) == len(
      ablation.CLAIMS)


@pytest.mark.slow
@pytest.mark.training_processes(2)  # --jobs=2.
def test_ablation_command_end_to_end(tmp_path):
  workdir = tmp_path / "grid"
  command = [sys.executable, str(th.ROOT / "launch" / "ablation.py"),
             "--config=configs/patches.py", "--seeds=1",
             "--runs=paper,vae", "--jobs=2", f"--workdir={workdir}",
             "--config.num_train_steps=2", "--config.data.num_train=32",
             "--config.data.num_test=24", "--config.checkpoint_every_steps=1",
             "--config.log_every_steps=1", "--config.model.width=16",
             "--config.model.latent_dim=8"]
  result = subprocess.run(command, cwd=th.ROOT, env=th.env(1),
                          capture_output=True, text=True,
                          timeout=th.PATIENCE, check=False)
  assert result.returncode == 0, result.stderr[-6000:]
  summary = json.loads((workdir / "ablation.json").read_text())
  assert list(summary["runs"]) == ["paper", "vae"]
  assert summary["runs"]["paper"]["reconstruction/l1"]["n"] == 1
  assert len(summary["claims"]) == len(ablation.CLAIMS)
  table = (workdir / "ablation.md").read_text().splitlines()
  assert len(table[0].split(" | ")) == 3 + len(ablation.METRICS)
  assert [line.split(" | ")[0] for line in table[2:4]] == ["| paper",
                                                            "| vae"]
  assert (workdir / "compare" / "reconstructions.png").exists()
  assert "Starting at step 0" in (workdir / "vae_seed0.log").read_text()
  assert "--runs=paper,vae" in summary["command"]
  # Again: both runs are finished, so nothing is trained.
  again = subprocess.run(command + ["--nofigures"], cwd=th.ROOT,
                         env=th.env(1), capture_output=True, text=True,
                         timeout=th.PATIENCE, check=False)
  assert again.returncode == 0, again.stderr[-6000:]
  assert "Running" not in again.stderr
