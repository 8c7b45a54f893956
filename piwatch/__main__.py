"""`python -m piwatch`: serve PiWatch with uvicorn on PIWATCH_HOST:PIWATCH_PORT."""

from __future__ import annotations

import logging
import sys

from piwatch.reactions import ReactionsError
from piwatch.settings import Settings


def server_options(settings: Settings) -> dict:
    """uvicorn's options for PiWatch. No access log: kubewatch's webhook URL carries the token
    (`?token=`, piwatch.app says why) and uvicorn logs each request's path with its query, into
    the router's journal. The app logs events and refusals itself, without the token."""
    return dict(host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                proxy_headers=False, access_log=False)


def main() -> int:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    import uvicorn

    from piwatch.app import TokenMissing, create_app

    try:
        app = create_app(settings)
    except (ReactionsError, TokenMissing) as exc:
        # systemd shows this line in `systemctl status`; a traceback would bury it.
        print(f"piwatch: {exc}", file=sys.stderr)
        return 2
    # uvicorn.run, not Server.run: it exits non-zero when it cannot bind (no LAN address yet),
    # which is what makes systemd's Restart=on-failure retry.
    uvicorn.run(app, **server_options(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
