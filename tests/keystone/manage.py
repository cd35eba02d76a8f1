"""Run several keystone-manage commands in a row, importing Keystone once.

    python manage.py KEYSTONE_CONF COMMAND [ARGS...] [-- COMMAND [ARGS...]]...

Each command is exactly `keystone-manage --config-file KEYSTONE_CONF COMMAND ARGS...`, run
in a child forked after the import (its configuration and database state start fresh, as
in a process of its own); the first that fails stops the rest, with its exit status.
Importing Keystone takes about 3 s of CPU here, so start.sh's four setup commands take
about 4 s instead of 12 s.
"""

import os
import sys

from keystone.cmd import cli

conf, rest = sys.argv[1], sys.argv[2:]
commands, current = [], []
for arg in rest + ["--"]:
    if arg == "--":
        if current:
            commands.append(current)
        current = []
    else:
        current.append(arg)

for command in commands:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            cli.main(argv=["keystone-manage", "--config-file", conf, *command])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"manage.py: keystone-manage {command[0]} failed ({code})", file=sys.stderr)
        sys.exit(code if code > 0 else 1)
