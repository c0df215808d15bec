"""``eat-extender``: serve the extender (settings from ``EAT_EXTENDER_*``; flags override)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from eat_extender.settings import get_settings


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="eat-extender", description=__doc__)
    ap.add_argument("--host", help="listen address (EAT_EXTENDER_HOST)")
    ap.add_argument("--port", type=int, help="listen port (EAT_EXTENDER_PORT)")
    ap.add_argument("--kubeconfig", help="kubeconfig for the watch (EAT_EXTENDER_KUBECONFIG)")
    a = ap.parse_args(argv)
    for flag in ("host", "port", "kubeconfig"):
        if getattr(a, flag) is not None:
            os.environ[f"EAT_EXTENDER_{flag.upper()}"] = str(getattr(a, flag))
    get_settings.cache_clear()
    settings = get_settings()

    import uvicorn

    level = settings.log_level.upper()
    logging.basicConfig(level="DEBUG" if level == "TRACE" else level,  # "trace" is uvicorn's, below DEBUG
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One worker: the cache and the gang holds live in this process.
    uvicorn.run("eat_extender.app:app", host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), access_log=False, workers=1)


if __name__ == "__main__":
    main()
