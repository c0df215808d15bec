"""``python -m eat_inference`` is ``eat-infer``."""

from eat_inference import cli

cli.app()
