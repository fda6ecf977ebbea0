"""Progress lines and metrics files of long runs."""

from __future__ import annotations

import csv

from latent_residual import progress
from latent_residual.progress import RunLogger


def test_lines_show_rate_eta_and_scalars_and_metrics_reach_csv(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "_INTERVAL_LOG", 0.0)  # a line at every step, as a log file would get every 10 s
    with RunLogger(tmp_path, 4, "job", initial=1) as run:
        run.advance()
        run.log(2, loss=0.5)
        run.advance()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("job: 2/4 (50%) ") and "steps/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("job: 3/4 (75%) ") and lines[-1].endswith("| loss=0.5")
    rows = list(csv.reader((tmp_path / "metrics.csv").open()))
    assert rows[0] == ["step", "seconds", "metric", "value"] and rows[1][::2] == ["2", "loss"]
    assert any((tmp_path / "tensorboard").iterdir())


def test_quiet_runs_print_nothing(capsys):
    with RunLogger(None, 3, "job", quiet=True) as run:
        run.advance(3)
    assert capsys.readouterr().err == ""


def test_the_rate_names_what_is_counted():
    run = RunLogger(None, 10, "evaluate", quiet=True, unit="episodes")
    run.advance(2)
    assert " episodes/s, " in run.line() and "steps/s" not in run.line()
