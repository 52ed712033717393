"""``treesearch`` command line.

  treesearch run CONFIG [--set key=value]... [--out DIR] [--limit N]

Exit status: 0 on success, 2 on a bad config or bad arguments (one line on stderr naming
the field), 1 on a failure during the run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from treesearch.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="treesearch", description="Tree search over LLM reasoning steps.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a YAML search job")
    run.add_argument("config", help="path to a job YAML (see configs/)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set algorithm.width=8 (repeatable)",
    )
    run.add_argument("--out", type=Path, default=None, help="output dir (default: runs/<config>-<time>)")
    run.add_argument("--limit", type=int, default=None, help="only the first N problems")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out: skip finished problems"
    )
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    run.add_argument(
        "--in-process", action="store_true", help="no Ray: in-process deterministic backends only"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    return 2


def _run(args: argparse.Namespace) -> int:
    from treesearch.runner import format_summary, run_job

    overrides = list(args.overrides)
    if args.in_process:
        overrides.append("run.in_process=true")
    if args.limit is not None:
        if args.limit < 1:
            print("error: --limit must be >= 1", file=sys.stderr)
            return 2
        overrides.append(f"run.limit={args.limit}")
    try:
        cfg = load_config(args.config, overrides)
        if args.resume and args.out is None:
            raise ConfigError("--resume needs --out DIR (the run to continue)")
        out = args.out or Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        if cfg.run.in_process:
            summary = run_job(cfg, out, progress=not args.quiet, resume=args.resume)
        else:
            try:
                from actors.driver import run_on_ray, validate
            except ImportError as e:
                raise ConfigError(
                    f"Ray is not installed ({e.name}): install treesearch[ray] or pass --in-process"
                ) from e
            validate(cfg)
            summary = run_on_ray(cfg, out, args.address, progress=not args.quiet, resume=args.resume)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(f"output: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
