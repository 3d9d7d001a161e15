"""The role refuses, changing nothing, when sshd would not do what it promises.

Each case runs the converge against one container (the playbook runs of a
host take turns, see sshd2fa_helpers.host_lock) and restores what it planted.
"""

import json

import sshd2fa_helpers as h

WATCHED = ["/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d/00-hardened-mailhost.conf", "/etc/pam.d/sshd",
           "/etc/security/hardened-mailhost-sshd-trusted.conf"]


def _sums(instance):
    return {path: instance.run("sha256sum", path, check=False).stdout.split(" ")[0] for path in WATCHED}


def _recap_unchanged(proc):
    changed = h.recap_changed(proc.stdout)
    return changed and not any(changed)


def test_match_blocks_that_weaken_a_user_or_network_are_refused(instance):
    """Match User in a drop-in and Match Address in sshd_config: named, refused, nothing changed.

    The live sshd is never reloaded with them, but `sshd -T` reads them: ivan
    and the trusted address are probed by no other test.
    """
    trusted = instance.address
    weak_user = "/etc/ssh/sshd_config.d/50-weak-user.conf"
    main = "/etc/ssh/sshd_config"
    with h.host_lock(instance):
        original_main = instance.run("cat", main).stdout
        before = _sums(instance)
        try:
            instance.run("sh", "-c", "printf 'Match User ivan\\n    AuthenticationMethods password\\n"
                         "    PasswordAuthentication yes\\n' > %s" % weak_user)
            instance.run("sh", "-c", "printf '\\nMatch Address %s\\n    DisableForwarding no\\n"
                         "    AllowStreamLocalForwarding yes\\n' >> %s" % (trusted, main))
            planted = _sums(instance)
            proc = h.converge("--limit", instance.name)
            assert proc.returncode != 0, proc.stdout[-3000:]
            flat = proc.flat
            # Who is affected, what, and where it is set.
            assert "passwordauthentication yes" in flat and "ivan from 192.0.2.1" in flat, flat[-3000:]
            assert "authenticationmethods password" in flat
            assert weak_user + ":3 (Match User ivan)" in flat, flat[-3000:]
            assert "allowstreamlocalforwarding yes" in flat and "from " + trusted in flat
            assert main + ":" in flat and "(Match Address %s)" % trusted in flat
            assert "Nothing was changed" in flat
            assert _recap_unchanged(proc), proc.stdout[-1500:]
            assert _sums(instance) == planted
        finally:
            instance.run("rm", "-f", weak_user)
            instance.run("sh", "-c", "cat > %s" % main, stdin=original_main)
        assert _sums(instance) == before
        # With the blocks gone the same converge goes through.
        proc = h.converge("--limit", instance.name)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert _recap_unchanged(proc), proc.stdout[-1500:]


def test_trusted_networks_that_trust_everybody_are_refused(instance):
    """0.0.0.0/0, ::/0 and a network holding the default gateway: refused, nothing changed."""
    gateway = instance.run("sh", "-c", "ip -4 route show default | awk '{print $3; exit}'").stdout.strip()
    assert gateway, "the container has no IPv4 default route"
    gateway_net = gateway.rsplit(".", 1)[0] + ".0/24"
    with h.host_lock(instance):
        before = _sums(instance)
        extra = json.dumps({"sshd_2fa_trusted_networks": ["0.0.0.0/0", "::/0", gateway_net]})
        proc = h.converge("--limit", instance.name, "-e", extra)
        assert proc.returncode != 0, proc.stdout[-3000:]
        flat = proc.flat
        assert "entry 0.0.0.0/0 trusts every address" in flat, flat[-3000:]
        assert "entry ::/0 trusts every address" in flat
        assert "entry %s contains the default gateway %s" % (gateway_net, gateway) in flat
        assert "Nothing was changed" in flat
        assert _recap_unchanged(proc), proc.stdout[-1500:]
        assert _sums(instance) == before
        trusted = instance.run("cat", "/etc/security/hardened-mailhost-sshd-trusted.conf").stdout
        assert "0.0.0.0/0" not in trusted and "::/0" not in trusted and gateway_net not in trusted
