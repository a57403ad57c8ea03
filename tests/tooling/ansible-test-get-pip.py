"""Stand-in for ansible-test's pip bootstrap script (get-pip-<version>.py).

ansible-test creates each sanity test's virtual environment without pip and
downloads https://ci-files.testing.ansible.com/ansible-test/get-pip-<version>.py
to put pip into it. Where that host is out of reach but a package index is not,
`make sanity` puts this file in ansible-test's cache instead: it installs the pip
that Python bundles (ensurepip), then the requested packages (the pinned pip)
from the package index, which is what the downloaded script does.

It is called like the original: python get_pip.py [pip options] PACKAGE... [--no-setuptools] [--no-wheel]
"""

import subprocess
import sys


def main():
    args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    # In a child process: ensurepip.bootstrap() hides pip's configuration (PIP_CONFIG_FILE=/dev/null)
    # from the rest of this process, and with it the index and certificate settings of this machine.
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"], stdout=subprocess.DEVNULL)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet"] + args)


if __name__ == "__main__":
    main()
