"""Imaging Assist desktop viewer (installs as ``imaging_assist_ui``).

Entry point: :func:`imaging_assist_ui.app.run_gui`.  The engine (``imaging_assist``)
never imports this package.

PySide6 is pinned to 6.11.2 in pyproject.toml: shiboken6 6.12.0 on CPython 3.11 drops a
reference to None/True/False on every void Qt call and the interpreter aborts after a few
thousand calls.
"""
