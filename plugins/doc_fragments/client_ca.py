# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Options shared by the client certificate CA modules."""

    DOCUMENTATION = r"""
options:
  ca_dir:
    description:
      - Folder that holds the CA (C(ca.key), C(ca.crt), C(crl.pem), C(index.sqlite3) and
        C(export/)). Mode C(0700); every file in it is C(0600).
      - An C(index.json) of earlier versions is converted on the first change and kept as
        C(index.json.migrated).
      - On the controller by default (the playbooks use C(hardened_ca_dir)); in the
        C(ca) role's host mode it is the C(ca) user's folder on the host.
    type: path
    required: true
requirements:
  - cryptography >= 38 (Debian 12 C(python3-cryptography) is enough)
notes:
  - The CA index is changed under an exclusive lock and written atomically, so
    several runs at the same time (for example C(forks) > 1 with C(delegate_to))
    never lose a record.
"""

    PASSPHRASE = r"""
options:
  passphrase:
    description:
      - Passphrase that encrypts the CA private key (keep it in Ansible Vault as
        C(hardened_ca_passphrase)). Never logged.
      - A new CA needs at least 16 characters. The shorter passphrase of a CA made by an
        older version still opens it, with a warning; change it with
        M(hardened.mailhost.client_ca) O(hardened.mailhost.client_ca#module:rekey=true) and
        O(hardened.mailhost.client_ca#module:new_passphrase).
    type: str
    required: true
"""
