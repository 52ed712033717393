"""``treesearch`` command line.

  treesearch run CONFIG [--set key=value]... [--out DIR|URI] [--limit N] [--resume] [--retry-failed]
                 [--address A] [--in-process]
  treesearch compare CONFIG --algorithms A,B,.. --budgets N,M,.. [--budget-unit U] [--seeds S]
                     [--limit N] [--out DIR] [--params ALGO.key=value]... [--set key=value]...
  treesearch export TREE --format json|graphml|dot|html [-o FILE]
  treesearch view RUN_DIR [--compare RUN_DIR] [-o FILE]
  treesearch submit CONFIG --address http://HEAD:8265 --out DIR|URI [--set key=value]... [--limit N]
                    [--python PATH] [--pip [REQS] | --uv [REQS]] [--no-preflight]
  treesearch status JOB --address A      treesearch status --run-dir DIR
  treesearch watch JOB --address A [--every S]     treesearch watch --run-dir DIR [--every S]
  treesearch results JOB --address A     treesearch results --run-dir DIR
  treesearch logs JOB --address A [--follow]       treesearch stop JOB --address A

Exit status: 0 on success, 2 on a bad config or bad arguments (one line on stderr naming
the field), 1 on a failure during the run.

A run flows one way: ``load_config`` -> ``resolve(cfg) -> Job`` (data, every check) ->
``make_plane(job, ...)`` (where the searches run: started once) -> ``run_job(job, out, plane)``
(the run dir). This is the one module of ``treesearch`` that imports ``actors`` (Ray is
optional).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from treesearch.config import load_config
from treesearch.errors import ConfigError
from treesearch.job import Job, resolve, transports
from treesearch.plane import LocalPlane, Plane
from treesearch.storage import local_run_dir

LOCAL_OR_CLUSTER = ("status", "watch", "results")  # JOB --address URL, or --run-dir DIR


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="treesearch", description="Tree search over LLM reasoning steps.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_compare(sub)
    _add_export_and_view(sub)
    _add_cluster_commands(sub)
    _add_serve(sub)
    return p


def _add_run(sub: Any) -> None:
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
    run.add_argument("--out", default=None, help="output dir or URI (default: runs/<config>-<time>)")
    run.add_argument("--limit", type=int, default=None, help="only the first N problems")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out: skip finished problems"
    )
    run.add_argument(
        "--retry-failed", action="store_true", help="re-run only the problems of --out that failed"
    )
    run.add_argument("--quiet", action="store_true", help="no start-up lines, no progress")
    run.add_argument("--verbose", action="store_true", help="replica logs (vLLM, Ray) on stderr too")
    run.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    run.add_argument(
        "--in-process", action="store_true", help="no Ray: in-process deterministic backends only"
    )


def _add_compare(sub: Any) -> None:
    cmp = sub.add_parser(
        "compare", help="every algorithm at every budget, same problems and pools: CSV, JSON, plots, report"
    )
    cmp.add_argument("config", help="the base job YAML (task, models, verifier)")
    cmp.add_argument("--algorithms", required=True, help="comma-separated, e.g. best_of_n,beam,mcts")
    cmp.add_argument("--budgets", required=True, help="comma-separated per-problem budgets, e.g. 256,1024")
    cmp.add_argument(
        "--budget-unit",
        default="total_tokens",
        help="total_tokens (policy + PRM, default) | flops (policy + PRM) | generated_tokens | "
        "generator_calls (policy only)",
    )
    cmp.add_argument("--seeds", type=int, default=1, help="seeds per cell, from run.seed up")
    cmp.add_argument(
        "--budget-scope",
        default="problem",
        help="problem (each problem's own budget, default) | job (budget x problems as one pool) | "
        "problem,job (both)",
    )
    cmp.add_argument("--limit", type=int, default=None, help="only the first N problems")
    cmp.add_argument("--out", default=None, help="output dir (default: runs/compare-<time>); resumable")
    cmp.add_argument(
        "--params", action="append", default=[], metavar="ALGO.KEY=VALUE", help="e.g. beam.width=8"
    )
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cmp.add_argument("--verbose", action="store_true", help="replica logs (vLLM, Ray) on stderr too")
    cmp.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    cmp.add_argument("--in-process", action="store_true", help="no Ray: deterministic backends only")


def _add_export_and_view(sub: Any) -> None:
    exp = sub.add_parser("export", help="export a tree (or every tree of a run dir)")
    exp.add_argument("tree", help="trees/<id>.msgpack or a run dir")
    exp.add_argument("--format", required=True, help="json | graphml | dot | html")
    exp.add_argument("-o", "--output", default=None, help="output file (a directory for a run dir)")
    view = sub.add_parser("view", help="write one self-contained HTML viewer for a run")
    view.add_argument("run_dir")
    view.add_argument("--compare", default=None, help="a second run dir, shown side by side")
    view.add_argument("-o", "--output", default=None, help="output file (default RUN_DIR/view.html)")
    view.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                      help="while the run runs: rewrite the page (it reloads) this often")  # fmt: skip


def _add_cluster_commands(sub: Any) -> None:
    sub_ = sub.add_parser("submit", help="submit a job to a Ray cluster (Ray Jobs)")
    sub_.add_argument("config")
    sub_.add_argument("--address", required=True, help="Ray job server, e.g. http://HEAD:8265")
    sub_.add_argument("--out", required=True, help="run dir on the cluster (absolute path) or a URI")
    sub_.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sub_.add_argument("--limit", type=int, default=None)
    sub_.add_argument("--python", default="python", metavar="PATH",
                      help="the job's interpreter on the cluster (default: python on its PATH)")  # fmt: skip
    env = sub_.add_mutually_exclusive_group()
    for installer in ("pip", "uv"):
        env.add_argument(f"--{installer}", nargs="?", const="", default=None, metavar="REQUIREMENTS",
                         help=f"install treesearch[ray]'s requirements (or REQUIREMENTS, a file) for "
                              f"the job with {installer} (Ray's runtime env)")  # fmt: skip
    sub_.add_argument("--no-preflight", action="store_true",
                      help="do not ask the cluster's python first (GPUs an autoscaler adds)")  # fmt: skip
    for name, text in (
        ("status", "a job's state, live figures and replica load"),
        ("watch", "status, refreshed until the job ends"),
        ("logs", "a job's logs"),
        ("stop", "stop a job"),
        ("results", "a job's summary and files (partial while it runs)"),
    ):
        cmd = sub.add_parser(name, help=text)
        if name in LOCAL_OR_CLUSTER:
            cmd.add_argument("job", nargs="?", default=None)
            cmd.add_argument("--address", default=None, help="Ray job server, e.g. http://HEAD:8265")
            cmd.add_argument("--run-dir", default=None, help="a local run's dir instead of a cluster job")
            if name == "watch":
                cmd.add_argument("--every", type=float, default=2.0, metavar="SECONDS", help="refresh period")
            continue
        cmd.add_argument("job")
        cmd.add_argument("--address", required=True, help="Ray job server, e.g. http://HEAD:8265")
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="stream until the job ends")


def _add_serve(sub: Any) -> None:
    srv = sub.add_parser(
        "serve", help="serve searches: an OpenAI-compatible API on Ray Serve over warm pools"
    )
    srv.add_argument(
        "configs", nargs="+", help="profile configs (a model id each: its file name), or dirs of them"
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    srv.add_argument("--api-key", default=None, help="required as 'Authorization: Bearer KEY' "
                     "(default: $TREESEARCH_API_KEY; none: no key)")  # fmt: skip
    srv.add_argument(
        "--out", default="runs/serve", help="run dir of the served searches (default runs/serve)"
    )
    srv.add_argument("--replicas", type=int, default=1, help="ingress replicas (each one engine per profile)")
    srv.add_argument("--max-in-flight", type=int, default=64, help="searches at once per ingress replica")
    srv.add_argument(
        "--max-queued", type=int, default=256, help="requests waiting per ingress replica (then 429)"
    )
    srv.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After of a 429 (seconds)")
    srv.add_argument("--retain", type=int, default=10_000, help="searches kept in the run dir")
    srv.add_argument(
        "--grace-s", type=float, default=30.0, help="on SIGINT/SIGTERM, how long searches may finish"
    )
    srv.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a field of every profile")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    commands = {"run": _run, "compare": _compare, "export": _export_command, "view": _export_command,
                "serve": _serve}  # fmt: skip
    try:  # one mapping of failures to exit statuses for every command (module docstring)
        return commands.get(args.command, _job_command)(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def make_plane(
    job: Job, address: str | None = None, say: Callable[[str], None] | None = None, verbose: bool = False
) -> Iterator[Plane]:
    """Where ``job``'s searches run, started for the ``with`` block: the engine in this process
    over in-process backends (``run.in_process``), else the job's replica pools on Ray (local
    unless ``address``; :func:`actors.plane.ray_plane`)."""
    if job.cfg.run.in_process:
        transports(job)  # each pool has an in-process backend: checked before a run dir is written
        yield LocalPlane()
        return
    try:
        from actors.plane import ray_plane
    except ImportError as e:
        raise ConfigError(
            f"Ray is not installed ({e.name}): install treesearch[ray] or pass --in-process"
        ) from e
    with ray_plane(job, address, say, verbose) as plane:
        yield plane


def _export_command(args: argparse.Namespace) -> int:
    from treesearch.export_cli import export, view, watch

    if args.command == "export":
        for path in export(args.tree, args.format, args.output):
            print(path)
    else:
        if args.watch is not None:
            watch(args.run_dir, args.compare, args.output, args.watch, say=lambda p: print(p, flush=True))
        else:
            print(view(args.run_dir, args.compare, args.output))
    return 0


def _local_command(args: argparse.Namespace) -> int:
    """status / watch / results of a local run dir (its status.json and results.jsonl)."""
    from treesearch.progress import describe_status, read_status, run_state, watch
    from treesearch.runner import results_text

    run_dir = Path(args.run_dir)

    def read() -> tuple[str, bool]:
        status = read_status(run_dir)
        return describe_status(status), run_state(status) != "running"

    if args.command == "status":
        print(read()[0])
    elif args.command == "watch":
        watch(read, args.every)
    else:
        try:
            state = run_state(read_status(run_dir))
        except ConfigError:  # a run dir from before status.json: finished if it has a summary
            if not (run_dir / "summary.json").is_file():
                raise
            state = "finished"
        print(results_text(str(run_dir), state))
    return 0


def _job_command(args: argparse.Namespace) -> int:
    if args.command in LOCAL_OR_CLUSTER:
        if (args.run_dir is not None) == (args.job is not None or args.address is not None):
            raise ConfigError(
                f"{args.command}: give JOB --address URL (a cluster job) or --run-dir DIR (a local run)"
            )
        if args.run_dir is not None:
            try:
                return _local_command(args)
            except KeyboardInterrupt:  # leaving a watch
                return 0
        if args.job is None or args.address is None:
            raise ConfigError(f"{args.command}: a cluster job needs both JOB and --address URL")
    try:
        from actors import jobs
    except ImportError as e:
        print(f"error: Ray is not installed ({e.name}): install treesearch[ray]", file=sys.stderr)
        return 2
    try:
        if args.command == "submit":
            overrides = list(args.overrides) + ([f"run.limit={args.limit}"] if args.limit else [])
            installer = "pip" if args.pip is not None else "uv" if args.uv is not None else None
            job = jobs.submit(
                args.config,
                args.address,
                args.out,
                overrides,
                python=args.python,
                installer=installer,
                requirements_file=args.pip or args.uv or None,
                check=not args.no_preflight,
                say=lambda line: print(line, file=sys.stderr, flush=True),
            )
            print(job)
        elif args.command == "status":
            print(jobs.status(args.address, args.job))
        elif args.command == "watch":
            from treesearch.progress import watch

            watch(lambda: jobs.snapshot(args.address, args.job), args.every)
        elif args.command == "logs":
            jobs.logs(args.address, args.job, args.follow)
        elif args.command == "stop":
            print(jobs.stop(args.address, args.job))
        else:
            text, failed = jobs.results(args.address, args.job)
            print(text)
            return 1 if failed else 0
    except RuntimeError as e:  # e.g. an unknown job id reported by the job server
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # leaving a watch
        return 0
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from treesearch.runner import format_summary, run_job

    overrides = list(args.overrides)
    if args.in_process:
        overrides.append("run.in_process=true")
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError("--limit must be >= 1")
        overrides.append(f"run.limit={args.limit}")
    cfg = load_config(args.config, overrides)
    if (args.resume or args.retry_failed) and args.out is None:
        raise ConfigError("--resume and --retry-failed need --out DIR (the run to continue)")
    out = args.out or str(Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    job = resolve(cfg)  # every check, once, before anything starts
    progress = not args.quiet
    with (
        local_run_dir(out) as local,
        make_plane(job, args.address, _say if progress else None, args.verbose) as plane,
    ):
        summary = run_job(job, local, plane, progress, args.resume, args.retry_failed)
    print(format_summary(summary))
    print(f"output: {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    for name in ("port", "replicas", "max_in_flight", "max_queued", "retain"):
        low = 0 if name == "max_queued" else 1  # no queue: refused when all are busy
        if getattr(args, name) < low or (name == "port" and args.port > 65535):
            raise ConfigError(f"--{name.replace('_', '-')}: {getattr(args, name)} is out of range")
    for name, value in (("grace-s", args.grace_s), ("retry-after-s", args.retry_after_s)):
        if not 0 <= value < 1e6:
            raise ConfigError(f"--{name}: {value} is out of range [0, 1e6)")
    try:
        from actors.service import load_profiles, serve_forever
    except ImportError as e:
        raise ConfigError(f"serving needs Ray Serve ({e.name}): install treesearch[ray]") from e
    profiles = load_profiles(args.configs, args.overrides)
    options = {"max_in_flight": args.max_in_flight, "max_queued": args.max_queued, "retain": args.retain,
               "retry_after_s": args.retry_after_s}  # fmt: skip
    key = args.api_key if args.api_key is not None else os.environ.get("TREESEARCH_API_KEY") or None
    say = lambda line: print(line, flush=True)  # noqa: E731
    serve_forever(profiles, args.host, args.port, args.address, key, str(Path(args.out).resolve()), options,
                  args.replicas, args.grace_s, say)  # fmt: skip
    return 0


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from e


def _compare(args: argparse.Namespace) -> int:
    from treesearch import compare
    from treesearch.report import write_report
    from treesearch.runner import run_job

    overrides = list(args.overrides) + (["run.in_process=true"] if args.in_process else [])
    if args.limit is not None:
        overrides.append(f"run.limit={args.limit}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    cfg = load_config(args.config, overrides)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    cells = compare.plan(
        cfg,
        algorithms,
        _numbers(args.budgets, "--budgets"),
        args.budget_unit,
        args.seeds,
        compare.parse_params(args.params),
        [s.strip() for s in args.budget_scope.split(",") if s.strip()],
    )
    out = Path(args.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"{len(cells)} runs -> {out}", file=sys.stderr)
    job = resolve(cfg)
    with make_plane(job, args.address, _say, args.verbose) as plane:  # every cell on the same pools
        rows = compare.run_grid(
            cells,
            out,
            args.budget_unit,
            lambda c, d: run_job(resolve(c), d, plane, progress=False, resume=True),
        )
    compare.mark_frontier(rows)
    compare.write_tables(rows, out)
    best = compare.write_best(rows, cells, out, args.budget_unit)
    verifier = job.verifier[0]
    report = write_report(rows, out, "treesearch " + " ".join(args.argv), note=f"verifier: {verifier}")
    print(compare.format_table(rows))
    print(f"output: {out}  (report: {report}; best config per budget: {best})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
