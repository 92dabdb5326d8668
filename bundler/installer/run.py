"""Entry point inside an unpacked installer: ``python3 -I -S installer/run.py ...``.

-I leaves this folder off sys.path, so it is put there first; then the
installer runs from the modules the bundle carries (verified by install.sh).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    from bundler.installer.main import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the installer: nothing has run yet
    sys.stderr.write("airbundle install: interrupted (nothing was done)\n")
    sys.exit(130)
main()
