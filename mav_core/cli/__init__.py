"""The command line: `python -m mav_core info | init | generate | train | eval`."""
