"""`python -m sparring_operator ...` is the `sparring` command."""

from sparring_operator.cli import app

app(prog_name="sparring")
