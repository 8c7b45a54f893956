"""`python -m piwatch`: serve PiWatch with uvicorn on PIWATCH_HOST:PIWATCH_PORT."""

from __future__ import annotations

import logging
import sys

from piwatch.reactions import ReactionsError
from piwatch.settings import Settings


def main() -> int:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    import uvicorn

    from piwatch.app import create_app

    try:
        app = create_app(settings)
    except ReactionsError as exc:
        # systemd shows this line in `systemctl status`; a traceback would bury it.
        print(f"piwatch: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
