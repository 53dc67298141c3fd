"""The wire between the controller and the in-sandbox runner: the one package both sides import.

``contract`` (the task and the result), ``config`` (what the controller tells the
runner and the judge), ``paths`` (where things are inside a sandbox, the file names
and commands), ``progress`` (the progress line the runner writes to its log). It
depends on pydantic only: the sandbox image ships it beside the runner, and the
controller never imports the runner, nor the runner the controller.
"""
