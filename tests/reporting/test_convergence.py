"""The epoch a run stopped improving at, read off its log.csv."""

import pytest

from robustdml.errors import ConfigError
from robustdml.reporting.convergence import plateau_epoch, validation_rows


def _log(tmp_path, nmi, robust):
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,loss,nmi,robust_nmi"] + [f"{e},1.0,{a},{b}" for e, (a, b) in enumerate(zip(nmi, robust), 1)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_the_plateau_is_where_neither_clean_nor_robust_validation_rises_any_more(tmp_path):
    clean = [0.3, 0.4, 0.5, 0.55, 0.56, 0.56, 0.56, 0.56, 0.56, 0.56]
    robust = [0.05, 0.08, 0.10, 0.12, 0.14, 0.16, 0.165, 0.165, 0.165, 0.165]  # rises longer
    run = _log(tmp_path, clean, robust)
    assert len(validation_rows(run)) == 10 and validation_rows(run / "log.csv")[0]["robust_nmi"] == 0.05
    assert plateau_epoch(run, window=1) == 6  # robust NMI gains 0.005 after epoch 6, under the 0.01 tolerance
    assert plateau_epoch(run, metrics=("nmi",), window=1) == 4  # clean NMI alone stops earlier
    assert plateau_epoch(run, window=1, tol=0.0) == 7


def test_one_noisy_evaluation_does_not_delay_the_plateau_but_a_late_rise_does(tmp_path):
    spiked = [0.10, 0.20, 0.30, 0.30, 0.30, 0.30, 0.30, 0.30, 0.325, 0.30]  # one evaluation 0.025 high
    flat = [0.5] * 10
    assert plateau_epoch(_log(tmp_path, flat, spiked), window=1) == 9  # unsmoothed, the spike is a rise
    # the trailing mean reaches 0.30 two evaluations late (epoch 5, not 3: on the safe side) and
    # lifts the spike to 0.308 only
    assert plateau_epoch(_log(tmp_path, flat, spiked), window=3) == 5
    rising = [0.1 * e for e in range(1, 11)]
    assert plateau_epoch(_log(tmp_path, flat, rising)) is None  # still rising at its end: too short to tell


def test_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="log.csv"):
        plateau_epoch(tmp_path / "missing")
    with pytest.raises(ConfigError, match="robust_nmi"):
        plateau_epoch([{"epoch": 1.0, "nmi": 0.5}])
    with pytest.raises(ConfigError, match="window"):
        plateau_epoch([{"epoch": 1.0, "nmi": 0.5, "robust_nmi": 0.1}], window=0)


def test_the_converged_command_prints_each_plateau_the_grids_epochs_and_a_plot(tmp_path):
    from clirun import run_main
    flat = [0.5] * 10
    early = _log(tmp_path / "a", flat, [0.10, 0.20, 0.30] + [0.30] * 7)
    late = _log(tmp_path / "b", flat, [0.05 * e for e in range(1, 7)] + [0.30] * 4)
    rising = _log(tmp_path / "c", flat, [0.1 * e for e in range(1, 11)])
    proc = run_main("converged", str(early), str(late), "--window", "1", "--plot", str(tmp_path / "p.png"))
    assert proc.returncode == 0, proc.stderr
    assert f"{early}: plateau at epoch 3 of 10, 7 evaluations after it" in proc.stdout
    assert f"{late}: plateau at epoch 6 of 10" in proc.stdout
    assert "epochs for a grid of these: 6" in proc.stdout
    assert (tmp_path / "p.png").stat().st_size > 0
    proc = run_main("converged", str(rising), str(early))
    assert proc.returncode == 0 and "still improving at its last evaluated epoch (10)" in proc.stdout
    assert "epochs for a grid" not in proc.stdout and (rising / "plateau.png").is_file()
    proc = run_main("converged", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "log.csv" in proc.stderr and "Traceback" not in proc.stderr
