"""Stand-in for the pip bootstrap script ansible-test downloads.

ansible-test fetches get-pip.py from a host this network does not reach;
scripts/lint.sh places this file in its cache instead. It installs pip from
the interpreter's own ensurepip wheel, then lets that pip install what
ansible-test asked for (from PyPI, which is reachable).
"""

import ensurepip
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
ensurepip.bootstrap(upgrade=True)
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
