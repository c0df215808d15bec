"""``eat-operator``: run kopf with this package's handlers, cluster-wide.

Configuration is by ``EAT_OPERATOR_*`` variables (``settings.Settings``); the flags below
only choose logging. Logs are JSON lines by default (one object per line, with kopf's
object reference when there is one).
"""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from eat_operator import handlers, settings as settings_mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="eat-operator", description=__doc__.split("\n\n")[0])
    ap.add_argument("--log-format", choices=["json", "plain"], default="json")
    ap.add_argument("--verbose", action="store_true", help="kopf's own debug logs too")
    a = ap.parse_args(argv)
    kopf.configure(verbose=a.verbose,
                   log_format=kopf.LogFormat.JSON if a.log_format == "json" else kopf.LogFormat.PLAIN)
    if not a.verbose:  # kopf logs every watch event it hands to a handler: far too much here
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    s = settings_mod.Settings()
    assert handlers.startup is not None  # importing handlers registers them with kopf
    liveness = f"http://0.0.0.0:{s.liveness_port}/healthz" if s.liveness_port else None
    kopf.run(clusterwide=True, standalone=True, liveness_endpoint=liveness)
    return 0


if __name__ == "__main__":
    sys.exit(main())
