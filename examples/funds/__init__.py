"""The "funds" example service: every prodkit middleware wired the way a real team runs them.

Run it with ``python -m examples.funds`` (see ``--help``); configuration comes from the
environment variables listed in the project's design and in ``docs/example.md``.
"""
