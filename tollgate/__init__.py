"""The application shell: the ``tollgate`` command, the wiring of every role, and the commands that
sit above all roles (audit, replay, statements). Nothing below imports from here."""

__version__ = "0.2.0"
