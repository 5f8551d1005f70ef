"""The ``robustdml`` command: train, evaluate, data info (and more as they arrive).

Errors caused by the user's input print as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import RobustDMLError
from .arguments import _commands

log = logging.getLogger("robustdml")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; given ``argv``, only the chosen command's options are built (the
    others' need the heavy imports: ``robustdml --help`` answers without them)."""
    parser = argparse.ArgumentParser(
        prog="robustdml",
        description="Adversarially robust deep metric learning: train, attack, defend (EAT) and evaluate "
                    "clustering-based inference and retrieval.")
    parser.add_argument("--version", action="version", version=f"robustdml {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars, warnings only")
    parser._add_container_actions(common)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name, add_arguments, text in _commands():
        p = sub.add_parser(name, parents=[common], **text)
        if argv is None or name == chosen:
            add_arguments(p)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("robustdml")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _one_line_warnings() -> None:
    """robustdml's own warnings (the pre-flight checks') as one line each on stderr, as its errors."""
    import warnings

    from ..errors import RobustDMLWarning
    default = warnings.showwarning
    if getattr(default, "robustdml", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RobustDMLWarning):
            print(f"robustdml: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    show.robustdml = True
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    args.quiet, args.verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    _one_line_warnings()
    try:
        from ..engine.provenance import git_commit
        git_commit()  # the commit of the code this process loaded, read now: not whatever is checked out when it ends
        code = args.func(args)
        if "torch.distributed" in sys.modules:  # under torchrun: every rank leaves together, the group closed
            from ..engine.distributed import finish_distributed
            finish_distributed()
        return code
    except RobustDMLError as e:
        print(f"robustdml: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustdml: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if not _peer_lost(e):
            raise
        print("robustdml: error: another process of this torchrun launch stopped; what was finished is kept: "
              "run the same command again to continue", file=sys.stderr)
        return 1


def _peer_lost(error: RuntimeError) -> bool:
    """A collective failed because another process of the launch died (gloo and NCCL say so in words)."""
    text = str(error)
    return "torch.distributed" in sys.modules and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted",
                            "Broken pipe"))
