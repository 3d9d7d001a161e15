# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each module attribute means; a module states only its support and details."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Whether the module can run in check mode, reporting what would change without changing anything.
  diff_mode:
    description: Whether the module returns a before/after difference in diff mode.
  idempotent:
    description: Whether a second run with the same arguments reports no change.
"""
