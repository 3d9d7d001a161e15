# -*- coding: utf-8 -*-
# Copyright: hardened.mailhost developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin: write a secret into a private file on the controller.

Runs entirely in the controller process (nothing is sent to a host). The
content never enters the result, so no callback (screen, JSON, JSONL, AWX
events) can record it; the optional terminal message goes straight to
/dev/tty for the same reason.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.hardened.mailhost.plugins.module_utils import _controller_files

ARGUMENT_SPEC = _controller_files.SECRET_ARGUMENT_SPEC


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(
            argument_spec=ARGUMENT_SPEC,
            mutually_exclusive=[["content", "content_b64"]],
            required_if=[["state", "present", ["content", "content_b64"], True]],
        )
        mode = args["mode"]
        try:
            mode = int(mode, 8) if isinstance(mode, str) else int(mode)
        except ValueError:
            raise AnsibleActionFail("mode must be an octal string such as '0600'")
        data = args["content"]
        if args["content_b64"] is not None:
            try:
                data = base64.b64decode(args["content_b64"], validate=True)
            except (binascii.Error, ValueError):
                raise AnsibleActionFail("content_b64 is not valid base64")
        check = bool(self._task.check_mode)
        try:
            if args["state"] == "absent":
                changed = _controller_files.remove_owned_file(args["path"], args["owner"], check_mode=check)
            else:
                changed = _controller_files.write_owned_file(
                    args["path"], data, args["owner"], mode=mode, check_mode=check)
        except _controller_files.ControllerFileError as exc:
            raise AnsibleActionFail(str(exc))
        shown = False
        if args["state"] == "present" and changed and not check and args["tty_message"]:
            shown = _controller_files.show_on_tty(args["tty_message"])
        result.update(changed=changed, path=args["path"], shown_on_tty=shown)
        return result
