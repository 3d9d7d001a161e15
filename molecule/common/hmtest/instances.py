"""Find the scenario's containers and reach them the way a client would."""

import functools
import json
import os
import re
import subprocess

import testinfra
import yaml


class Instance:
    """One Molecule platform: a systemd-booted Debian container."""

    def __init__(self, name, platform):
        self.name = name
        self.platform = platform  # "debian12" or "debian13"

    def __repr__(self):
        return "Instance(%s)" % self.name

    @functools.cached_property
    def host(self):
        """testinfra host over ``podman exec`` (several times faster than the ansible backend)."""
        return testinfra.get_host("podman://" + self.name)

    def port(self, container_port, proto="tcp"):
        """Host port on 127.0.0.1 that podman published for ``container_port``."""
        out = subprocess.run(
            ["podman", "port", self.name, "%s/%s" % (container_port, proto)],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        for mapping in out:
            addr, _, port = mapping.rpartition(":")
            if addr == "127.0.0.1":
                return int(port)
        raise LookupError("%s: port %s is not published on 127.0.0.1" % (self.name, container_port))

    def _inspect(self):
        return json.loads(subprocess.run(
            ["podman", "inspect", self.name], check=True, capture_output=True, text=True,
        ).stdout)[0]

    @functools.cached_property
    def address(self):
        """The container's address on its scenario network."""
        nets = self._inspect()["NetworkSettings"]["Networks"]
        return next(iter(nets.values()))["IPAddress"]

    @functools.cached_property
    def gateway(self):
        """Where connections to published ports seem to come from inside the container."""
        nets = self._inspect()["NetworkSettings"]["Networks"]
        return next(iter(nets.values()))["Gateway"]

    def run(self, *cmd, check=True, user=None, stdin=None):
        """Run a command in the container (argv form), return CompletedProcess."""
        argv = ["podman", "exec", "-i"]
        if user:
            argv += ["--user", user]
        argv += [self.name, *cmd]
        return subprocess.run(argv, check=check, capture_output=True, text=True, input=stdin)


def load_instances():
    """Instances listed in Molecule's inventory; the platform is the name's suffix."""
    path = os.environ["MOLECULE_INVENTORY_FILE"]
    with open(path, encoding="utf-8") as handle:
        inventory = yaml.safe_load(handle)
    instances = []
    for name in sorted(inventory["all"]["hosts"]):
        match = re.search(r"(debian\d+)$", name)
        instances.append(Instance(name, match.group(1) if match else name))
    return instances
