"""Sub-commands of the ``onnx-hwprune`` CLI.

Each module here is one verb and exposes the same four names, so that ``cli.py`` can list
them without knowing what they do:

- ``NAME``: the verb (``"analyze"``);
- ``HELP``: one line for ``onnx-hwprune --help``;
- ``add_arguments(parser: argparse.ArgumentParser) -> None``;
- ``run(args: argparse.Namespace) -> int``: the exit code. Raise
  :class:`onnx_hwprune.errors.UserError` for bad input: the CLI prints it as one line and
  exits with 2.

The main verb (``onnx-hwprune IN OUT``) lives in ``prune.py``.
"""
