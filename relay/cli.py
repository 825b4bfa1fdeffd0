"""Command line: `relay run | check-config | scrub | usage`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from relay.config import Config, ConfigError, default_config, load_config
from relay.policy.compile import validate_policies


def _load(path: str | None) -> Config:
    path = path or os.environ.get("RELAY_CONFIG")
    if not path:
        return default_config()
    config = load_config(path)
    problems = validate_policies(config)
    if problems:
        raise ConfigError(problems, path)
    return config


def _load_or_report(path: str | None) -> Config | None:
    """The validated config, or None after printing every problem to stderr."""
    try:
        return _load(path)
    except ConfigError as err:
        _print_config_error(err)
        return None


def _print_config_error(err: ConfigError) -> None:
    where = f"{err.source}: " if err.source else ""
    print(
        f"{where}invalid configuration ({len(err.problems)} problem{'s' if len(err.problems) != 1 else ''}):",
        file=sys.stderr,
    )
    for problem in err.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from relay.server import EXIT_NOT_STARTED, defer_early_reloads, serve

    defer_early_reloads()
    config = _load_or_report(args.config)
    if config is None:
        # A worker whose config stopped loading since the supervisor read it cannot start.
        return 1 if args.worker is None else EXIT_NOT_STARTED
    config_path = args.config or os.environ.get("RELAY_CONFIG")
    return serve(
        config,
        config_path=config_path,
        worker=args.worker,
        worker_dir=args.worker_dir,
        pid_file=args.pid_file,
    )


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        pid = int(Path(args.pid_file).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"relay reload: cannot signal the relay via {args.pid_file}: {exc}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to {pid}; the relay validates the config before applying it")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load_or_report(args.path)
    if config is None:
        return 1
    from relay.server import describe_upstream

    projects = len(config.projects)
    print(
        f"{args.path}: ok ({projects} project{'s' if projects != 1 else ''}, "
        f"upstream {describe_upstream(config)})"
    )
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    from relay.dryrun import InputError, dry_run, print_reports

    config = _load_or_report(args.config)
    if config is None:
        return 1
    limit = config.limits.max_decompressed_bytes
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(args.file, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        print(f"relay scrub: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if len(data) > limit:
        # Read no further: the relay refuses such a body (413) before reading it.
        print(
            f"relay scrub: {args.file} is larger than limits.max_decompressed_bytes "
            f"({limit} bytes); the relay would refuse it (413)",
            file=sys.stderr,
        )
        return 1
    try:
        reports = dry_run(config, data, args.project)
    except InputError as exc:
        print(f"relay scrub: {exc}", file=sys.stderr)
        return 1
    print_reports(reports, as_json=args.json)
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from relay.usage import print_usage

    config = _load_or_report(args.config)
    if config is None:
        return 1
    return print_usage(config, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="relay", description="Sentry-compatible event relay and scrubbing proxy."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve (embedded defaults without --config)")
    run.add_argument(
        "--config", "-c", help="YAML config file (default: $RELAY_CONFIG, else embedded defaults)"
    )
    run.add_argument("--pid-file", help="write the process id here (for `relay reload`)")
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-dir", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    reload = sub.add_parser("reload", help="ask a running relay to re-read its config (SIGHUP)")
    reload.add_argument(
        "--pid-file", required=True, help="the file given to `relay run --pid-file`"
    )
    reload.set_defaults(func=cmd_reload)

    check = sub.add_parser(
        "check-config", help="validate a config file; exit 1 listing every problem"
    )
    check.add_argument("path")
    check.set_defaults(func=cmd_check_config)

    scrub = sub.add_parser(
        "scrub", help="dry-run the policy on an event JSON or an envelope; sends nothing"
    )
    scrub.add_argument(
        "--config", "-c", help="YAML config file (default: $RELAY_CONFIG, else embedded defaults)"
    )
    scrub.add_argument(
        "--project", type=int, help="project id whose policy applies (default: from the input)"
    )
    scrub.add_argument("--json", action="store_true", help="print JSON")
    scrub.add_argument("file", help="event JSON or envelope file, or - for standard input")
    scrub.set_defaults(func=cmd_scrub)

    usage = sub.add_parser("usage", help="print quota, budget and spike-protection usage per scope")
    usage.add_argument(
        "--config", "-c", help="YAML config file (default: $RELAY_CONFIG, else embedded defaults)"
    )
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    usage.set_defaults(func=cmd_usage)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # `relay scrub ... | head`: the reader left; that is not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
