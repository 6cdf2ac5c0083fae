"""``python -m ecosistema.gateway --routes routes.yaml --port 8080 --workers 2``."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from ecosistema.gateway import gateway_config, run_gateway
from ecosistema.gateway.config import config_problems
from ecosistema.platform.config import InvalidSettingsError, load_settings


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the gateway."""
    parser = argparse.ArgumentParser(prog="python -m ecosistema.gateway")
    parser.add_argument("--routes", help="route table (.yaml or .json); default: settings")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except InvalidSettingsError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    routes = args.routes or settings.gateway_routes
    if routes is None:
        parser.error("no route table: pass --routes or set ECOSISTEMA_GATEWAY_ROUTES")
    try:
        config = gateway_config(routes, settings)
    except ValidationError as exc:
        for problem in config_problems(exc):
            print(f"error: route table {routes}: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    run_gateway(
        config,
        args.host,
        args.port,
        args.workers,
        certfile=args.certfile,
        keyfile=args.keyfile,
    )


if __name__ == "__main__":
    main()
