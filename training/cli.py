"""The `nba` command: `nba serve` starts the service; experiment commands join in later issues."""

from __future__ import annotations

import argparse
import sys

from serving.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.workers
    if settings.database_url.startswith("sqlite") and ":memory:" in settings.database_url:
        print("NBA_DATABASE_URL must be a file or a server: an in-memory database loses every decision",
              file=sys.stderr)
        return 2
    print(f"nba: serving on http://{host}:{port} with {workers} worker(s), store {settings.database_url}",
          flush=True)
    Granian(
        "training.service:app_from_env",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        log_access=False,
        respawn_failed_workers=True,
    ).serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nba", description="Real-time next-best-action service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP service (settings from NBA_* variables)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None)
    serve.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
