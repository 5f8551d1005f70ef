"""The ``robustdml`` command run two ways: as the real executable (a subprocess: its start-up, exit
status and stderr as a user sees them) and in this process (the same ``main``; no interpreter start-up
and import, so the many bad-input cases cost milliseconds). A few tests per command use the real
executable; the parametrised ones use ``run_main``. An exception escaping ``main`` fails the test, as a
traceback on stderr would."""

import contextlib
import io
import subprocess
import sys

from robustdml.cli.main import main


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustdml", *args], capture_output=True, text=True)


def run_main(*args) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
